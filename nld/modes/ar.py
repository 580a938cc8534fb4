"""Autoregressive decoding: causal prefill, then one causal forward per token."""

from __future__ import annotations

from collections.abc import Generator

import torch

from nld.modes.base import Decoding, Policy
from nld.sampling import TokenLogprob
from nld.step import StepRequest, StepResult, causal

LAST = torch.tensor([-1])


def prefill(decoding: Decoding) -> Generator[StepRequest, StepResult, tuple[int, list[TokenLogprob] | None]]:
    """Causal forward over the prompt that writes its K/V; returns the next token (the seed) and its
    log-probability entry (None when not asked for)."""
    prompt = decoding.prompt
    result = yield decoding.request(prompt, causal(len(prompt)), write_cache=True, rows=LAST)
    return int(result.token_ids[-1]), decoding.logprobs_of(result, [0])


def ar_policy(decoding: Decoding) -> Policy:
    """nfe counts one per emitted token (the prefill yields the first), as the released ar_generate."""
    token, logprobs = yield from prefill(decoding)
    while True:
        decoding.state.nfe += 1
        decoding.state.forwards += 1
        if decoding.emit([token], logprobs):
            return
        result = yield decoding.request(torch.tensor([token]), causal(1), write_cache=True)
        token, logprobs = int(result.token_ids[0]), decoding.logprobs_of(result, [0])
