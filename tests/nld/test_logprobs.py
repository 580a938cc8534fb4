"""Log-probabilities of the emitted tokens: AR against a cache-free forward, self-speculation equal to
AR (each emitted token's entry comes from the row that verified it), one entry per emitted token in
every mode, and the top-n ordered with the chosen id's value among them under greedy decoding."""

from __future__ import annotations

import math

import pytest
import torch

from nld.generate import generate
from nld.modes import MODES, GenerationParams
from nld.step import causal
from tests.conftest import FIXTURE_CASES
from tests.nld.helpers import backend_for, raw_step

TOP = 3


def _prompts(case: str, vocab: int, count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(sum(map(ord, case)) + 11)
    lengths = torch.randint(2, 30, (count,), generator=generator)
    return [torch.randint(0, vocab, (int(n),), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("case", FIXTURE_CASES)
def test_ar_logprobs_equal_a_full_causal_forward(case: str) -> None:
    backend = backend_for(case)
    mask = backend.config.mask_token_id
    for prompt in _prompts(case, backend.config.vocab_size, 3):
        result = generate(backend, prompt, "ar", GenerationParams(max_new_tokens=16, logprobs=TOP))
        assert result.logprobs is not None and len(result.logprobs) == len(result.new_ids)
        ids = prompt + result.new_ids
        logits = raw_step(backend, backend.new_cache(len(ids)), ids, causal(len(ids))).clone()
        logits[:, mask] = float("-inf")  # excluded from the distribution, as from the confidence
        expected = torch.log_softmax(logits, dim=-1)[len(prompt) - 1 : -1]
        for position, (token, entry) in enumerate(zip(result.new_ids, result.logprobs, strict=True)):
            assert entry.logprob == pytest.approx(float(expected[position, token]), abs=1e-4)
            values, top_ids = expected[position].topk(TOP)
            assert [token for token, _ in entry.top] == top_ids.tolist()
            assert [value for _, value in entry.top] == pytest.approx(values.tolist(), abs=1e-4)


@pytest.mark.parametrize("case", FIXTURE_CASES)
@pytest.mark.parametrize("mode", ["linear-spec", "quadratic-spec"])
def test_self_speculation_logprobs_equal_ar_logprobs(case: str, mode: str) -> None:
    backend = backend_for(case)
    for prompt in _prompts(case, backend.config.vocab_size, 6):
        params = GenerationParams(max_new_tokens=30, block_length=8, logprobs=TOP, repetition_penalty=1.2)
        ar = generate(backend, prompt, "ar", params)
        spec = generate(backend, prompt, mode, params)
        assert spec.new_ids == ar.new_ids
        assert spec.logprobs is not None and ar.logprobs is not None
        for ours, reference in zip(spec.logprobs, ar.logprobs, strict=True):
            assert ours.logprob == pytest.approx(reference.logprob, abs=1e-4)
            assert [token for token, _ in ours.top] == [token for token, _ in reference.top]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("case", ["tiny_b8", "tiny_b8_eos"])
def test_one_entry_per_emitted_token_and_greedy_picks_the_top(case: str, mode: str) -> None:
    backend = backend_for(case)
    for prompt in _prompts(case, backend.config.vocab_size, 4):
        for max_new in (5, 13):  # cut mid-block and mid-cycle
            result = generate(backend, prompt, mode, GenerationParams(max_new_tokens=max_new, logprobs=2))
            assert result.logprobs is not None and len(result.logprobs) == len(result.new_ids)
            for token, entry in zip(result.new_ids, result.logprobs, strict=True):
                assert math.isfinite(entry.logprob) and entry.logprob <= 0
                assert len(entry.top) == 2 and entry.top[0][1] >= entry.top[1][1]
                if mode != "diffusion":  # greedy AR-verified tokens are their position's most likely id
                    assert entry.top[0][0] == token and entry.top[0][1] == pytest.approx(entry.logprob)


def test_no_logprobs_unless_asked() -> None:
    result = generate(backend_for("tiny_b8"), [1, 2, 3], "linear-spec", GenerationParams(max_new_tokens=8))
    assert result.logprobs is None
