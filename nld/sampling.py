"""Token selection from logits: greedy, or temperature sampling filtered by top-k, min-p and top-p (in
that order, as vLLM and transformers apply them), with optional banned ids.

`select_tokens` returns, per row, the chosen id and its confidence: the model's softmax probability of
that id (temperature 1, over the vocabulary minus the banned ids). That is the confidence the diffusion
and self-speculation policies rank positions by.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nld.kernels.ops import top1_confidence
from nld.limits import GREEDY_BELOW, check_value


@dataclass
class Sampler:
    """How a step turns logits into tokens. `banned_ids` are never chosen (the mask id, by default)."""

    temperature: float = 0.0
    top_p: float = 1.0
    banned_ids: tuple[int, ...] = ()
    generator: torch.Generator | None = field(default=None, repr=False)
    top_k: int = 0  # keep the k most likely ids (0: all)
    min_p: float = 0.0  # keep ids at least min_p x the most likely one's probability (0: all)

    def __post_init__(self) -> None:
        for name in ("temperature", "top_p", "top_k", "min_p"):
            check_value(name, getattr(self, name))

    @property
    def greedy(self) -> bool:
        """Temperatures below GREEDY_BELOW decode as 0: dividing logits by them would overflow."""
        return self.temperature < GREEDY_BELOW


def seeded_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A torch.Generator seeded with `seed`, or None (global RNG) when no seed is given."""
    if seed is None:
        return None
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row outside the smallest set whose mass reaches top_p, then renormalise."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    filtered = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def _top_k_filter(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the `top_k` largest probabilities of each row (ties at the k-th kept), renormalised."""
    if top_k >= probs.shape[-1]:
        return probs
    kth = probs.topk(top_k, dim=-1).values[:, -1:]
    filtered = probs.masked_fill(probs < kth, 0.0)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def _min_p_filter(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    """Keep the ids whose probability is at least min_p x the row's largest, renormalised."""
    floor = probs.max(dim=-1, keepdim=True).values * min_p
    filtered = probs.masked_fill(probs < floor, 0.0)
    return filtered / filtered.sum(dim=-1, keepdim=True)


def without_banned(logits: torch.Tensor, banned_ids: tuple[int, ...]) -> torch.Tensor:
    """float32 `logits` [N, V] with the banned ids at -inf (a copy when any are banned)."""
    logits = logits.float()
    if banned_ids:
        logits = logits.clone()
        logits[:, list(banned_ids)] = float("-inf")
    return logits


def select_tokens(logits: torch.Tensor, sampler: Sampler) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of `logits` [N, V]; return (ids [N] int64, confidence [N] float32)."""
    if sampler.greedy and len(sampler.banned_ids) <= 1:  # the top-1 kernel (CUDA) or its reference
        return top1_confidence(logits, sampler.banned_ids[0] if sampler.banned_ids else -1)
    logits = without_banned(logits, sampler.banned_ids)
    probs = torch.softmax(logits, dim=-1)
    if sampler.greedy:
        ids = logits.argmax(dim=-1)
    else:
        tempered = torch.softmax(logits / sampler.temperature, dim=-1)
        if sampler.top_k > 0:
            tempered = _top_k_filter(tempered, sampler.top_k)
        if sampler.min_p > 0:
            tempered = _min_p_filter(tempered, sampler.min_p)
        if sampler.top_p < 1:
            tempered = _top_p_filter(tempered, sampler.top_p)
        gen = sampler.generator
        if gen is not None and gen.device != tempered.device:
            tempered = tempered.to(gen.device)
        ids = torch.multinomial(tempered, 1, generator=gen).squeeze(-1).to(logits.device)
    confidence = probs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return ids, confidence


@dataclass(frozen=True)
class TokenLogprob:
    """One emitted token's log-probability and the `top` most likely ids at its position [(id, logprob)]."""

    logprob: float
    top: tuple[tuple[int, float], ...] = ()


@dataclass
class RowLogprobs:
    """Per wanted row of a step: the selected id's log-probability and the top-n ids with theirs."""

    chosen: torch.Tensor  # [N] float32
    top_ids: torch.Tensor  # [N, n] int64
    top_values: torch.Tensor  # [N, n] float32

    def entry(self, row: int) -> TokenLogprob:
        ids, values = self.top_ids[row].tolist(), self.top_values[row].tolist()
        return TokenLogprob(float(self.chosen[row]), tuple(zip(ids, values, strict=True)))

    def cpu(self) -> RowLogprobs:
        return RowLogprobs(self.chosen.cpu(), self.top_ids.cpu(), self.top_values.cpu())


def row_logprobs(
    logits: torch.Tensor,
    ids: torch.Tensor,
    banned_ids: tuple[int, ...],
    top: int,
    rows: torch.Tensor | None = None,
) -> RowLogprobs:
    """Log-probabilities under the model's own distribution (temperature 1, before penalties and
    filters; the banned ids excluded, as for the confidence) of `ids` [N] and of each row's `top` ids.
    With `rows`, only those rows are computed (the others hold NaN and -1)."""
    if rows is not None:
        rows = rows.to(logits.device)
        part = row_logprobs(logits[rows], ids.to(logits.device)[rows], banned_ids, top)
        width = part.top_ids.shape[-1]
        full = RowLogprobs(
            torch.full((logits.shape[0],), float("nan"), device=logits.device),
            torch.full((logits.shape[0], width), -1, dtype=torch.long, device=logits.device),
            torch.full((logits.shape[0], width), float("nan"), device=logits.device),
        )
        full.chosen[rows], full.top_ids[rows], full.top_values[rows] = part.chosen, part.top_ids, part.top_values
        return full
    logprobs = torch.log_softmax(without_banned(logits, banned_ids), dim=-1)
    chosen = logprobs.gather(-1, ids.to(logprobs.device).unsqueeze(-1)).squeeze(-1)
    values, top_ids = logprobs.topk(min(top, logprobs.shape[-1]), dim=-1)
    return RowLogprobs(chosen, top_ids, values)
