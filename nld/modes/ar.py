"""Autoregressive decoding: causal prefill, then one causal forward per token."""

from __future__ import annotations

import torch

from nld.modes.base import Decoding, Policy
from nld.step import causal

LAST = torch.tensor([-1])


def prefill(decoding: Decoding) -> Policy:
    """Causal forward over the prompt that writes its K/V; returns the next token (the seed)."""
    prompt = decoding.prompt
    result = yield decoding.request(prompt, causal(len(prompt)), write_cache=True, rows=LAST)
    return int(result.token_ids[-1])


def ar_policy(decoding: Decoding) -> Policy:
    """nfe counts one per emitted token (the prefill yields the first), as the released ar_generate."""
    token = yield from prefill(decoding)
    while True:
        decoding.state.nfe += 1
        decoding.state.forwards += 1
        if decoding.emit([token]):
            return
        result = yield decoding.request(torch.tensor([token]), causal(1), write_cache=True)
        token = int(result.token_ids[0])
