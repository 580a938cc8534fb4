"""Repetition, presence and frequency penalties, applied to a step's logits row by row.

The semantics are vLLM's (and, for repetition, transformers'): the repetition penalty divides a
positive logit (multiplies a negative one) of every id seen in the prompt or the output; the presence
penalty subtracts a constant from every id seen in the output; the frequency penalty subtracts its
value times the id's count in the output. What a row has "seen" is the request's emitted output plus,
per row, the tokens placed between that output and the row (`SeenTokens`): in a verify pass, row i has
seen the block's tokens before it, so a verify row is penalised exactly as the AR step at its position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Penalties:
    """A request's penalty values (1.0 / 0.0 / 0.0: off)."""

    repetition: float = 1.0
    presence: float = 0.0
    frequency: float = 0.0

    @property
    def active(self) -> bool:
        return self.repetition != 1.0 or self.presence != 0.0 or self.frequency != 0.0


@dataclass(frozen=True)
class SeenTokens:
    """Tokens beyond the emitted output that some rows have seen: row n has seen `tokens[:counts[n]]`."""

    tokens: torch.Tensor  # [K] int64
    counts: torch.Tensor  # [N] int64, one per wanted row of the step

    @classmethod
    def shared(cls, tokens: torch.Tensor, rows: int) -> SeenTokens:
        """Every one of `rows` rows has seen all of `tokens`."""
        return cls(tokens, torch.full((rows,), tokens.shape[0], dtype=torch.long))

    def matrix(self) -> torch.Tensor:
        """[N, K] ids, -1 where a row has not seen that token."""
        width = self.tokens.shape[0]
        seen = torch.arange(width)[None, :] < self.counts[:, None]
        return torch.where(seen, self.tokens[None, :].expand(self.counts.shape[0], width), -1)


@dataclass(frozen=True)
class PenaltyContext:
    """One step's penalty inputs for one request: the values, which ids the prompt holds [V] bool, how
    often each id occurs in the emitted output [V] float32, and what rows saw beyond the output."""

    penalties: Penalties
    prompt_mask: torch.Tensor
    output_counts: torch.Tensor
    seen: SeenTokens | None = None

    @classmethod
    def of(
        cls,
        penalties: Penalties,
        prompt_ids: torch.Tensor,
        output_ids: torch.Tensor,
        vocab: int,
        seen: SeenTokens | None = None,
    ) -> PenaltyContext:
        """The context of a prompt and an output given as ids."""
        history = PenaltyHistory(prompt_ids.tolist(), vocab)
        history.add(output_ids.tolist())
        return history.context(penalties, seen)


class PenaltyHistory:
    """A request's prompt mask and output counts, kept up to date as tokens are emitted: O(new tokens)
    per step, not O(output)."""

    def __init__(self, prompt_ids: list[int], vocab: int) -> None:
        self.prompt_mask = torch.zeros(vocab, dtype=torch.bool)
        self.prompt_mask[torch.tensor(prompt_ids, dtype=torch.long)] = True
        self.output_counts = torch.zeros(vocab, dtype=torch.float32)

    def add(self, tokens: list[int]) -> None:
        if tokens:
            self.output_counts.index_add_(0, torch.tensor(tokens, dtype=torch.long), torch.ones(len(tokens)))

    def context(self, penalties: Penalties, seen: SeenTokens | None = None) -> PenaltyContext:
        """This step's context. It shares the counts: a step is consumed before its tokens are emitted."""
        return PenaltyContext(penalties, self.prompt_mask, self.output_counts, seen)


def output_counts(context: PenaltyContext, rows: int, vocab: int, device: torch.device) -> torch.Tensor:
    """[rows, vocab] float32: how often each id occurs in the output each row has seen."""
    counts = context.output_counts.to(device).expand(rows, vocab).clone()
    if context.seen is not None and context.seen.tokens.numel():
        extra = context.seen.matrix().to(device)
        if extra.shape[0] != rows:
            raise ValueError(f"penalty context has {extra.shape[0]} rows for a step of {rows} wanted rows")
        counts.scatter_add_(1, extra.clamp(min=0), (extra >= 0).float())
    return counts


def apply_penalties(logits: torch.Tensor, context: PenaltyContext) -> torch.Tensor:
    """`logits` [N, V] (float32) with the request's penalties applied; a new tensor."""
    rows, vocab = logits.shape
    values = context.penalties
    counts = output_counts(context, rows, vocab, logits.device)
    penalised = logits
    if values.repetition != 1.0:
        seen = (counts > 0) | context.prompt_mask.to(logits.device)[None, :]
        scaled = torch.where(logits > 0, logits / values.repetition, logits * values.repetition)
        penalised = torch.where(seen, scaled, penalised)
    if values.frequency != 0.0:
        penalised = penalised - values.frequency * counts
    if values.presence != 0.0:
        penalised = penalised - values.presence * (counts > 0).float()
    return penalised
