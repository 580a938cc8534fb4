"""Quadratic self-speculation: every forward verifies the current draft and drafts the next one.

Layout of a cycle's forward (B rows of B+1 tokens): row i = [d_i, MASK x B], d_i at position L+i,
its masks at L+i+1 .. L+i+B. d_i attends to the cache and d_0..d_i (an exact causal chain, so its
K/V are the AR K/V); the masks of row i attend to the cache, d_0..d_i and their own row.
"""

from __future__ import annotations

import torch

from nld.modes.base import Decoding, GenerationParams, Policy
from nld.modes.linear_spec import accepted_length
from nld.penalties import SeenTokens
from nld.step import bidirectional, causal

DEFAULT_BLOCK = 16  # the released code's default, capped at the checkpoint's block_size
# Per device type, where the best block length differs: on a CPU a forward costs in proportion to its
# tokens, so the smallest block measured best (docs/bench.md, "quadratic-spec's block length on a CPU").
DEVICE_DEFAULT_BLOCK = {"cpu": 2}


def default_block(block_size: int, device: str | None = None) -> int:
    """The block length of a quadratic-spec request that names none, on `device` (a torch device type;
    None: the released code's default)."""
    return min(DEVICE_DEFAULT_BLOCK.get(device or "", DEFAULT_BLOCK), block_size)


def request_block(params: GenerationParams, block_size: int, device: str | None) -> int:
    """The block length a quadratic-spec request runs at: its own, else the device's default (the released
    code's under `reference_semantics`)."""
    if params.block_length:
        return params.block_length
    return default_block(block_size, None if params.reference_semantics else device)


def first_pass_visibility(prompt_length: int, masks: int) -> torch.Tensor:
    """[prompt | masks]: the prompt is causal; the masks see the whole prompt and each other."""
    total = prompt_length + masks
    visible = torch.zeros(total, total, dtype=torch.bool)
    visible[:prompt_length, :prompt_length] = causal(prompt_length)
    visible[prompt_length:, :] = True
    return visible


def cycle_layout(block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(visibility [B(B+1), B(B+1)], position offsets [B(B+1)]) of one quadratic cycle."""
    row = block + 1
    total = block * row
    visible = torch.zeros(total, total, dtype=torch.bool)
    offsets = torch.zeros(total, dtype=torch.long)
    chain = torch.arange(block) * row
    for i in range(block):
        first = i * row
        visible[first : first + row, chain[: i + 1]] = True
        visible[first + 1 : first + row, first + 1 : first + row] = bidirectional(block)
        offsets[first : first + row] = torch.arange(i, i + row)
    return visible, offsets


def quadratic_spec_policy(decoding: Decoding) -> Policy:
    """NLD.md's quadratic mode: nfe = 1 (first pass) + cycles; tokens per forward counts cycles only."""
    block = request_block(decoding.params, decoding.config.block_size, decoding.cache.keys.device.type)
    prompt = decoding.prompt
    length = len(prompt)
    masks = torch.full((block,), decoding.mask_id, dtype=torch.long)
    first = yield decoding.request(
        torch.cat((prompt, masks)),
        first_pass_visibility(length, block),
        write_cache=True,
        rows=torch.arange(length - 1, length + block),
        logprob_rows=torch.tensor([0]),
    )
    decoding.state.nfe = 1
    decoding.cache.crop(length)
    # Row 0 of `first` is the AR token after the prompt; rows 2.. are the masks at positions L+1 ..
    draft = torch.cat((first.token_ids[:1], first.token_ids[2:]))
    head_logprobs = decoding.logprobs_of(first, [0])  # of draft[0], the one draft token already verified
    visibility, offsets = cycle_layout(block)
    row = block + 1
    chain_counts = torch.arange(1, block + 1).repeat_interleave(row)  # row i's tokens follow d_0 .. d_i
    chain_rows = torch.arange(block) * row  # the AR rows: the only ones whose log-probabilities are read
    while True:
        committed = decoding.cache.length
        tokens = torch.full((block, row), decoding.mask_id, dtype=torch.long)
        tokens[:, 0] = draft
        positions = committed + offsets
        seen = SeenTokens(draft, chain_counts)
        result = yield decoding.request(
            tokens.flatten(), visibility, write_cache=True, positions=positions, seen=seen, logprob_rows=chain_rows
        )
        decoding.state.nfe += 1
        decoding.state.forwards += 1
        predicted = result.token_ids.view(block, row)
        accepted = accepted_length(predicted[:, 0], draft)  # d_k stands while the AR token after d_(k-1) is d_k
        decoding.cache.keep(committed, [i * row for i in range(accepted)])
        emitted = draft[:accepted].tolist()
        # d_k (k >= 1) was verified by row k-1's AR token; d_0 by the previous forward.
        logprobs = decoding.logprobs_of(result, [k * row for k in range(accepted - 1)])
        if logprobs is not None and head_logprobs is not None:
            logprobs = head_logprobs + logprobs
        head_logprobs = decoding.logprobs_of(result, [(accepted - 1) * row])
        # The next draft: row accepted-1's AR token, then its diffusion guesses for the tokens after it.
        draft = torch.cat((predicted[accepted - 1, :1], predicted[accepted - 1, 2:]))
        if decoding.emit_verified(emitted, logprobs):
            return
