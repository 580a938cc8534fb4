"""The step seam: one batched step over sequences of different lengths equals separate steps."""

from __future__ import annotations

import pytest
import torch

from nld.sampling import Sampler
from nld.step import StepRequest, bidirectional, block_diagonal, causal
from tests.conftest import DEVICES
from tests.nld.helpers import backend_for, raw_step


@pytest.mark.parametrize("device", DEVICES)
def test_batched_step_equals_single_steps(device: str) -> None:
    backend = backend_for("tiny_b8", device)
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8], [20, 21, 22, 23]]
    caches = [backend.new_cache(32) for _ in prompts]
    for cache, prompt in zip(caches, prompts, strict=True):
        raw_step(backend, cache, prompt, causal(len(prompt)), write=True)
    steps = [([40], causal(1)), ([41, 100, 100, 100], bidirectional(4)), ([42, 43, 44], causal(3))]
    singles = [raw_step(backend, cache, tokens, vis) for cache, (tokens, vis) in zip(caches, steps, strict=True)]
    requests = [
        StepRequest(
            cache,
            torch.tensor(tokens),
            torch.arange(cache.length, cache.length + len(tokens)),
            vis,
            Sampler(),
            write_cache=True,
            return_logits=True,
        )
        for cache, (tokens, vis) in zip(caches, steps, strict=True)
    ]
    batched = backend.step(requests)
    for single, result, cache, prompt, (tokens, _) in zip(singles, batched, caches, prompts, steps, strict=True):
        torch.testing.assert_close(result.logits.cpu(), single, atol=1e-5, rtol=0)
        assert cache.length == len(prompt) + len(tokens)


def test_rows_index_each_requests_own_tokens_in_a_padded_batch() -> None:
    backend = backend_for("tiny_b8")
    prompts = [[1, 2, 3, 4, 5, 6, 7], [9, 8]]
    last = torch.tensor([-1])

    def prefill(prompt: list[int]) -> StepRequest:
        positions = torch.arange(len(prompt))
        request = StepRequest(backend.new_cache(16), torch.tensor(prompt), positions, causal(len(prompt)), Sampler())
        request.rows, request.return_logits = last, True
        return request

    batched = backend.step([prefill(prompt) for prompt in prompts])
    for prompt, result in zip(prompts, batched, strict=True):
        alone = backend.step([prefill(prompt)])[0]
        assert result.logits.shape[0] == 1
        torch.testing.assert_close(result.logits, alone.logits, atol=1e-5, rtol=0)


def test_block_diagonal_groups() -> None:
    visible = block_diagonal(causal(2), bidirectional(2))
    assert visible.tolist() == [
        [True, False, False, False],
        [True, True, False, False],
        [False, False, True, True],
        [False, False, True, True],
    ]


def test_request_shapes_are_checked() -> None:
    backend = backend_for("tiny_b8")
    with pytest.raises(ValueError, match="step shapes disagree"):
        StepRequest(backend.new_cache(4), torch.tensor([1, 2]), torch.tensor([0]), causal(2), Sampler())
