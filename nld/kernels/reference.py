"""CPU references of the decode-step kernels, batched over sequences. They define what the CUDA kernels
in `plugins/` compute, and they are exactly what the policies did per sequence before
(`sampling.select_tokens` greedy, `diffusion.select_commits`, `linear_spec.accepted_length`,
`KVCache.keep`); tests/nld/kernels checks both.

Ties are broken towards the lower index everywhere (argmax, commit ranking), as a kernel can do
deterministically.
"""

from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (lowbias32) on int64 tensors holding uint32 values."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def uniform_noise(seed: int, rows: int, cols: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Counter-based uniforms in (0, 1) [rows, cols]: element (r, c) = hash(seed, r * cols + c). The CUDA
    kernel computes the same bits for the same element, so sampling is reproducible across devices."""
    index = torch.arange(rows * cols, dtype=torch.int64, device=device).view(rows, cols) & MASK32
    bits = _mix32(_mix32(index) ^ (seed & MASK32))
    return ((bits >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)


def top1_confidence(
    logits: torch.Tensor, exclude_id: int = -1, temperature: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `logits` [N, V]: the chosen id (argmax, or with `temperature` > 0 a Gumbel-max sample
    seeded by `seed`) and its confidence, the softmax probability of that id at temperature 1; the
    `exclude_id` column (the mask id; -1 for none) is never chosen and takes no probability mass.
    Returns (ids int64 [N], confidence float32 [N])."""
    scores = logits.float()
    if exclude_id >= 0:
        scores = scores.clone()
        scores[:, exclude_id] = float("-inf")
    if temperature > 0:
        noise = uniform_noise(seed, *scores.shape, device=scores.device)
        ids = (scores / temperature - torch.log(-torch.log(noise))).argmax(dim=-1)
    else:
        ids = scores.argmax(dim=-1)
    confidence = torch.softmax(scores, dim=-1).gather(-1, ids[:, None]).squeeze(-1)
    return ids, confidence


def select_commits(
    confidence: torch.Tensor, is_mask: torch.Tensor, counts: torch.Tensor, use_threshold: bool, threshold: float
) -> torch.Tensor:
    """Which masked positions of each block [S, B] to commit: the `counts[s]` most confident (top-k by the
    schedule), or with `use_threshold` the most confident one plus every other at or above `threshold`.
    Returns bool [S, B]."""
    blocks, width = confidence.shape
    ranked = torch.where(is_mask, confidence.float(), torch.tensor(float("-inf"), device=confidence.device))
    # rank = how many masked positions beat this one (higher confidence, or equal at a lower index)
    higher = ranked[:, None, :] > ranked[:, :, None]
    earlier_tie = (ranked[:, None, :] == ranked[:, :, None]) & (
        torch.arange(width, device=ranked.device)[None, :] < torch.arange(width, device=ranked.device)[:, None]
    )
    rank = ((higher | earlier_tie) & is_mask[:, None, :]).sum(-1)
    if use_threshold:
        return is_mask & ((rank == 0) | (ranked >= threshold))
    return is_mask & (rank < counts.view(blocks, 1))


def accept_drafts(block: torch.Tensor, verified: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Self-speculation's acceptance per sequence: `block` [S, B] is [seed, draft...], `verified` [S, B]
    the verifier's argmax after each block token. Accepted = 1 + the drafts matched in a row (the last
    one is the verifier's bonus token). Returns (accepted int64 [S], emitted int64 [S, B]: verified[:accepted],
    -1 after)."""
    matches = (verified[:, :-1] == block[:, 1:]).long()
    accepted = matches.cumprod(dim=1).sum(dim=1) + 1
    positions = torch.arange(block.shape[1], device=block.device)[None, :]
    emitted = torch.where(positions < accepted[:, None], verified, torch.full_like(verified, -1))
    return accepted, emitted


def kv_keep_(values: torch.Tensor, starts: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """In place on a cache [S, R, P, D] (R: layers x heads): for each sequence keep slot
    `starts[s] + offsets[s, i]` for i < counts[s] (ascending offsets), compacted to `starts[s] + i`
    (quadratic mode's stride-(B+1) gather). Returns the new lengths starts + counts (int64 [S])."""
    for sequence in range(values.shape[0]):
        kept = int(counts[sequence])
        if kept == 0:
            continue
        start = int(starts[sequence])
        source = offsets[sequence, :kept].to(values.device) + start
        values[sequence, :, start : start + kept] = values[sequence, :, source]
    return starts + counts


def kv_crop_(values: torch.Tensor, lengths: torch.Tensor, new_lengths: torch.Tensor) -> torch.Tensor:
    """In place on a cache [S, R, P, D]: clear (zero) slots [new_lengths[s], lengths[s]) of each sequence,
    the rejected speculative tokens. Returns the new lengths (int64 [S])."""
    for sequence in range(values.shape[0]):
        values[sequence, :, int(new_lengths[sequence]) : int(lengths[sequence])] = 0
    return new_lengths.clone()
