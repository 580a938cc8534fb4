"""The step seam: the one primitive every decoding policy is written against.

A step runs the network once over some new tokens of one or more sequences. Each token has a
position; `visibility[i, j]` says whether new token i attends to new token j (every new token always
attends to its sequence's whole committed cache). Causal attention is a lower-triangular visibility,
a bidirectional block an all-true one, quadratic self-speculation a mix. The step may append the new
tokens' K/V to the cache. It returns, per new token, the selected id and its confidence (and the
logits only when asked), so a backend never has to ship full-vocabulary logits to the host. A step may
carry its rows' penalty context (applied to the logits before selection) and ask for log-probabilities
of the selected ids (with the top n).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from nld.config import NLDConfig
from nld.kv_cache import KVCache
from nld.penalties import PenaltyContext
from nld.sampling import RowLogprobs, Sampler


@dataclass
class StepRequest:
    """One sequence's part of a step."""

    cache: KVCache
    token_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    visibility: torch.Tensor  # [T, T] bool
    sampler: Sampler
    write_cache: bool = False
    adapter: bool = False
    return_logits: bool = False
    rows: torch.Tensor | None = None  # indices of the new tokens whose outputs are wanted (None: all)
    penalties: PenaltyContext | None = None  # applied to the wanted rows' logits before selection
    logprobs: int | None = None  # None: none; n: the selected ids' log-probabilities and the top n
    logprob_rows: torch.Tensor | None = None  # the wanted rows whose log-probabilities are read (None: all)

    def __post_init__(self) -> None:
        steps = self.token_ids.shape[0]
        if self.positions.shape != (steps,) or self.visibility.shape != (steps, steps):
            raise ValueError(
                f"step shapes disagree: token_ids {tuple(self.token_ids.shape)}, positions "
                f"{tuple(self.positions.shape)}, visibility {tuple(self.visibility.shape)}"
            )


@dataclass
class StepResult:
    """Per wanted row (`StepRequest.rows`, default all): selected id, its confidence, logits and
    log-probabilities if requested."""

    token_ids: torch.Tensor
    confidence: torch.Tensor
    logits: torch.Tensor | None = None
    logprobs: RowLogprobs | None = None


class PartialStepError(Exception):
    """Some requests of a batched step failed on their own (their sampling, their cache write).

    `errors` maps a request's index to its error; `results` holds the other requests' results (None at
    the failed indices), whose caches were written as asked. A backend raises this only after the
    shared forward succeeded; any other error from `step` means no cache was written."""

    def __init__(self, results: list[StepResult | None], errors: dict[int, Exception]) -> None:
        first = next(iter(errors.values()))
        super().__init__(f"{len(errors)} of {len(results)} requests failed in a step: {first}")
        self.results = results
        self.errors = errors


class StepBackend(Protocol):
    """What policies see of a backend: a config, caches, and `step` (which returns every result, or
    raises PartialStepError for requests that failed alone, or raises another error having written nothing)."""

    config: NLDConfig
    has_adapter: bool

    def new_cache(self, capacity: int) -> KVCache: ...

    def step(self, requests: list[StepRequest]) -> list[StepResult]: ...


def step_one(backend: StepBackend, request: StepRequest) -> StepResult:
    """Run a step of one request; its own failure is raised as itself."""
    try:
        return backend.step([request])[0]
    except PartialStepError as failures:
        raise failures.errors[0] from None


def causal(steps: int) -> torch.Tensor:
    """Visibility of a causal span: token i sees tokens <= i."""
    return torch.ones(steps, steps, dtype=torch.bool).tril()


def additive_bias(visible: torch.Tensor) -> torch.Tensor:
    """A visibility mask as an additive attention bias of the same shape: 0 where visible, -inf elsewhere."""
    return torch.zeros(visible.shape, dtype=torch.float32, device=visible.device).masked_fill(~visible, float("-inf"))


def bidirectional(steps: int) -> torch.Tensor:
    """Visibility of one bidirectional group: every token sees every other."""
    return torch.ones(steps, steps, dtype=torch.bool)


def block_diagonal(*blocks: torch.Tensor) -> torch.Tensor:
    """Visibility of consecutive independent spans (no attention across spans)."""
    return torch.block_diag(*blocks).bool()
