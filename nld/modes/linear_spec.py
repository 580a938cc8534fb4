"""Linear self-speculation: draft a block bidirectionally (adapter on), verify it causally, accept."""

from __future__ import annotations

import torch

from nld.kernels import ops as kernels
from nld.modes.ar import prefill
from nld.modes.base import Decoding, Policy
from nld.penalties import SeenTokens
from nld.step import bidirectional, causal


def accepted_length(verified: torch.Tensor, block: torch.Tensor) -> int:
    """Count of verifier tokens to emit: while verified[i] equals the drafted block[i+1], plus one bonus
    (the verify kernel on one sequence)."""
    accepted, _ = kernels.accept_drafts(block[None], verified[None])
    return int(accepted[0])


def linear_spec_policy(decoding: Decoding) -> Policy:
    """Released `linear_spec_generate` semantics: nfe counts the prefill, each draft and each verify."""
    params = decoding.params
    length = decoding.block_length()
    threshold = params.threshold or 0.0
    seed, logprobs = yield from prefill(decoding)
    decoding.state.nfe = 1
    if decoding.emit([seed], logprobs):
        return
    verify_counts = torch.arange(length)  # verify row i follows the output (ending in the seed) and block[1..i]
    while True:
        start = decoding.cache.length
        block = torch.full((length,), decoding.mask_id, dtype=torch.long)
        block[0] = seed
        while True:  # draft; with a threshold, fill iteratively until no mask is left
            is_mask = block == decoding.mask_id
            if not is_mask.any():
                break
            drafted = block[1:][block[1:] != decoding.mask_id]  # seen by every draft row (for the penalties)
            seen = SeenTokens.shared(drafted, length)
            result = yield decoding.request(block, bidirectional(length), write_cache=False, draft=True, seen=seen)
            decoding.state.nfe += 1
            decoding.state.forwards += 1
            if threshold <= 0:
                block = torch.where(is_mask, result.token_ids, block)
                break
            confidence = torch.where(is_mask, result.confidence, torch.tensor(float("-inf")))
            fill = confidence >= threshold
            if not fill.any():
                fill = torch.zeros_like(is_mask)
                fill[confidence.argmax()] = True
            block = torch.where(fill, result.token_ids, block)
        seen = SeenTokens(block[1:], verify_counts)
        result = yield decoding.request(block, causal(length), write_cache=True, seen=seen)
        decoding.state.nfe += 1
        decoding.state.forwards += 1
        accepted = accepted_length(result.token_ids, block)
        verified = result.token_ids.tolist()
        decoding.cache.crop(start + accepted)
        seed = verified[accepted - 1]
        if decoding.emit_verified(verified[:accepted], decoding.logprobs_of(result, range(accepted))):
            return
