"""Greedy self-speculation (linear and quadratic, product defaults) equals greedy AR token for token."""

from __future__ import annotations

import pytest
import torch

from nld.generate import generate
from nld.modes import GenerationParams
from tests.conftest import DEVICES, FIXTURE_CASES
from tests.nld.helpers import backend_for

PROMPTS = 20


def _prompts(case: str, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(sum(map(ord, case)))
    lengths = torch.randint(1, 40, (PROMPTS,), generator=generator)
    return [torch.randint(0, vocab, (int(n),), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", FIXTURE_CASES)
@pytest.mark.parametrize(("mode", "block"), [("linear-spec", 8), ("quadratic-spec", 8), ("quadratic-spec", 16)])
def test_self_spec_equals_ar(case: str, mode: str, block: int | None, device: str) -> None:
    backend = backend_for(case, device)
    accepted_more_than_one = 0
    for prompt in _prompts(case, backend.config.vocab_size):
        params = GenerationParams(max_new_tokens=40, block_length=block)
        ar = generate(backend, prompt, "ar", params)
        spec = generate(backend, prompt, mode, params)
        assert spec.new_ids == ar.new_ids, prompt
        assert spec.finish_reason == ar.finish_reason
        assert len(spec.new_ids) <= params.max_new_tokens
        accepted_more_than_one += sum(length > 1 for length in spec.acceptance_lengths)
        if mode == "quadratic-spec":
            assert spec.forwards == len(spec.acceptance_lengths)  # forwards = cycles
            assert spec.nfe == spec.forwards + 1  # plus the first [prompt | masks] pass
            assert spec.tokens_per_forward == pytest.approx(len(spec.new_ids) / spec.forwards)
    if case == "tiny_b8_spec_lora":  # drafts do get accepted on this model, so the check is not vacuous
        assert accepted_more_than_one > 0


def test_quadratic_accepts_several_tokens_per_forward() -> None:
    backend = backend_for("tiny_b8_spec_lora")
    prompt = [448, 419, 396, 482, 80]
    result = generate(backend, prompt, "quadratic-spec", GenerationParams(max_new_tokens=48, block_length=8))
    assert result.tokens_per_forward > 1.2
    assert max(result.acceptance_lengths) >= 4
