"""Block diffusion: denoise a block of masks by confidence, commit it causally, repeat."""

from __future__ import annotations

import torch

from nld.kernels import ops as kernels
from nld.modes.ar import LAST
from nld.modes.base import Decoding, Policy
from nld.penalties import SeenTokens
from nld.sampling import TokenLogprob
from nld.step import bidirectional, causal

NO_LOGPROB = TokenLogprob(float("nan"))  # a position never decoded (a block cut short by EOS, or a
# mask the released code's semantics "committed" and kept)


def even_schedule(masked: int, steps: int) -> list[int]:
    """How many positions to commit at each of `steps` steps: an even split, remainder front-loaded."""
    base, remainder = divmod(masked, steps)
    return [base + (1 if i < remainder else 0) for i in range(steps)]


def select_commits(
    confidence: torch.Tensor, is_mask: torch.Tensor, count: int | None, threshold: float | None
) -> torch.Tensor:
    """Bool mask of the masked positions to commit: the top-`count` by confidence, or with a threshold
    the single most confident plus every other masked position at or above it (the commit kernel)."""
    counts = torch.tensor([count or 0], device=confidence.device)
    use_threshold = threshold is not None
    return kernels.select_commits(confidence[None], is_mask[None], counts, use_threshold, threshold or 0.0)[0]


def eos_blocks_further_work(block: torch.Tensor, decoding: Decoding) -> bool:
    """True once the block holds an EOS with no mask before it: what follows it cannot matter."""
    for token in block.tolist():
        if token == decoding.mask_id:
            return False
        if decoding.is_eos(token):
            return True
    return False


def diffusion_policy(decoding: Decoding) -> Policy:
    """Released `generate` semantics: nfe = denoising forwards + one commit forward per block."""
    params = decoding.params
    length = decoding.block_length()
    prompt = decoding.prompt
    context = causal(len(prompt)) if params.causal_context else bidirectional(len(prompt))
    result = yield decoding.request(prompt, context, write_cache=True, rows=LAST)
    seed, seed_logprob = int(result.token_ids[-1]), decoding.logprobs_of(result, [0])
    while True:
        block = torch.full((length,), decoding.mask_id, dtype=torch.long)
        logprobs: list[TokenLogprob | None] = [None] * length  # of each position, from the pass that chose it
        if params.causal_context:
            block[0] = seed
            logprobs[0] = seed_logprob[0] if seed_logprob else None
        schedule = even_schedule(int((block == decoding.mask_id).sum()), length)
        for step in range(length):
            is_mask = block == decoding.mask_id
            if not is_mask.any():
                break
            seen = SeenTokens.shared(block[~is_mask], length)  # the block's decoded tokens (penalties)
            result = yield decoding.request(block, bidirectional(length), write_cache=False, seen=seen)
            decoding.state.nfe += 1
            commit = select_commits(result.confidence, is_mask, schedule[step], params.threshold)
            block = torch.where(commit, result.token_ids, block)
            if result.logprobs is not None:
                for position in commit.nonzero().flatten().tolist():
                    logprobs[position] = result.logprobs.entry(position)
            if eos_blocks_further_work(block, decoding):
                break
        commit_visibility = causal(length) if params.causal_context else bidirectional(length)
        seen = SeenTokens.shared(block, 1)
        result = yield decoding.request(block, commit_visibility, write_cache=True, rows=LAST, seen=seen)
        decoding.state.nfe += 1
        seed, seed_logprob = int(result.token_ids[-1]), decoding.logprobs_of(result, [0])
        emitted = None if decoding.state.logprobs is None else [entry or NO_LOGPROB for entry in logprobs]
        if decoding.emit(block.tolist(), emitted):
            decoding.state.forwards = decoding.state.nfe
            return
