"""The model's own greedy AR continuation of every block seed: the draft targets that the verifier accepts.

For a window x and block size B, block b starts at s = b*B. Its chain is [x_s, g_1 .. g_{B-1}] where
g_1.. is the greedy AR continuation of x_0..x_s (the real prefix plus the block's seed). Linear
self-speculation accepts a drafted token exactly when it equals this chain, so training the diffusion
side on chains (instead of the data's own continuation) teaches it what the verifier will accept.

All blocks of all windows roll out together: one causal pass over the windows gives every g_1 and the
K/V of the real prefix; each further step feeds one token per block, attending to the prefix up to its
seed and to its own chain.
"""

from __future__ import annotations

import torch

from nld.evaluate import repeated_ngram_share
from nld.model import NLDTransformer
from nld.step import additive_bias, causal


def greedy_ids(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Argmax over the vocabulary with the mask id excluded (what greedy decoding emits)."""
    return logits.float().index_fill(-1, torch.tensor([mask_id], device=logits.device), float("-inf")).argmax(-1)


@torch.no_grad()
def greedy_block_chains(model: NLDTransformer, windows: torch.Tensor, block: int) -> torch.Tensor:
    """windows [N, L] (L a multiple of `block`) -> [N, L]: each block's seed followed by the model's
    greedy AR continuation of the window up to that seed."""
    rows, length = windows.shape
    if length % block:
        raise ValueError(f"window length {length} is not a multiple of the block size {block}")
    mask_id = model.config.mask_token_id
    blocks = length // block
    device = windows.device
    seeds = torch.arange(blocks, device=device) * block
    hidden, prefix = model(
        windows,
        torch.arange(length, device=device).expand(rows, -1),
        additive_bias(causal(length).to(device))[None, None],
    )
    chain = [windows[:, seeds], greedy_ids(model.logits(hidden[:, seeds]), mask_id)]
    # A chain token sees the real prefix up to its block's seed, and its own chain before it.
    sees_prefix = torch.arange(length, device=device)[None, :] <= seeds[:, None]  # [blocks, L]
    own_chain = torch.eye(blocks, dtype=torch.bool, device=device)
    past = prefix
    for step in range(2, block):
        visible = torch.cat([sees_prefix] + [own_chain] * (step - 1), dim=1)
        bias = additive_bias(visible)[None, None]
        positions = (seeds + step - 1).expand(rows, -1)
        hidden, new = model(chain[-1], positions, bias, past)
        past = [(torch.cat((k, nk), 2), torch.cat((v, nv), 2)) for (k, v), (nk, nv) in zip(past, new, strict=True)]
        chain.append(greedy_ids(model.logits(hidden), mask_id))
    return torch.stack(chain, dim=2).reshape(rows, length)


@torch.no_grad()
def greedy_rollouts(model: NLDTransformer, windows: torch.Tensor, count: int) -> tuple[torch.Tensor, list]:
    """Greedy AR continuation (`count` tokens) of each row; also the causal K/V of all but the last token."""
    rows, length = windows.shape
    mask_id, device = model.config.mask_token_id, windows.device
    hidden, past = model(
        windows,
        torch.arange(length, device=device).expand(rows, -1),
        additive_bias(causal(length).to(device))[None, None],
    )
    context_past = [(k[:, :, :-1], v[:, :, :-1]) for k, v in past]
    tokens = [greedy_ids(model.logits(hidden[:, -1]), mask_id)]
    for offset in range(1, count):
        position = torch.full((rows, 1), length - 1 + offset, device=device)
        bias = torch.zeros(rows, 1, 1, length + offset, device=device)
        hidden, new = model(tokens[-1][:, None], position, bias, past)
        past = [(torch.cat((k, nk), 2), torch.cat((v, nv), 2)) for (k, v), (nk, nv) in zip(past, new, strict=True)]
        tokens.append(greedy_ids(model.logits(hidden[:, -1]), mask_id))
    return torch.stack(tokens, dim=1), context_past


def on_policy_windows(
    model: NLDTransformer, windows: torch.Tensor, greedy_tokens: int, max_tail_repeats: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the last `greedy_tokens` of each window by the model's greedy continuation of the rest,
    so that later blocks see the kind of context the draft sees while generating. Returns the windows
    and the AR-target mask (bool [N, L-1]): only next-token predictions of real tokens carry AR loss.
    A row whose greedy tail loops (a share of its tokens above `max_tail_repeats` repeats a 4-gram seen
    before) keeps its real tokens, so that loops are not what the chains teach."""
    rows, length = windows.shape
    real = length - greedy_tokens
    if not 1 < real <= length:
        raise ValueError(f"greedy_tokens {greedy_tokens} must leave at least 2 real tokens of {length}")
    tail, _ = greedy_rollouts(model, windows[:, :real], greedy_tokens)
    prefixes, tails = windows[:, :real].tolist(), tail.tolist()
    looping = [repeated_ngram_share(p, t) > max_tail_repeats for p, t in zip(prefixes, tails, strict=True)]
    keep_real = torch.tensor(looping, device=windows.device)
    ar_targets = torch.zeros(rows, length - 1, dtype=torch.bool, device=windows.device)
    ar_targets[:, : real - 1] = True
    ar_targets[keep_real] = True
    mixed = torch.where(keep_real[:, None], windows[:, real:], tail)
    return torch.cat((windows[:, :real], mixed), dim=1), ar_targets
