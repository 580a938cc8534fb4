"""Repetition, presence and frequency penalties: the logits transform against transformers' processor,
greedy AR against a cache-free oracle loop, and greedy self-speculation equal to greedy AR under the
same penalties on the released-code fixtures (the verify rows see exactly the AR context)."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from nld.generate import generate
from nld.modes import GenerationParams
from nld.penalties import Penalties, PenaltyContext, SeenTokens, apply_penalties
from nld.step import causal
from tests.conftest import FIXTURE_CASES
from tests.nld.helpers import backend_for, raw_step

PENALTIES = [
    {"repetition_penalty": 1.5},
    {"presence_penalty": 1.0, "frequency_penalty": 0.5},
    {"repetition_penalty": 1.3, "presence_penalty": -0.5, "frequency_penalty": 1.5},
]


def _prompts(case: str, vocab: int, count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(sum(map(ord, case)) + 7)
    lengths = torch.randint(1, 30, (count,), generator=generator)
    return [torch.randint(0, vocab, (int(n),), generator=generator).tolist() for n in lengths]


def test_repetition_penalty_equals_transformers_processor() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, generator=generator) * 4
    prompt, output = torch.tensor([1, 2, 7]), torch.tensor([7, 9, 9])
    context = PenaltyContext.of(Penalties(repetition=1.7), prompt, output, 50)
    expected = RepetitionPenaltyLogitsProcessor(1.7)(torch.cat((prompt, output))[None].expand(3, -1), logits.clone())
    torch.testing.assert_close(apply_penalties(logits, context), expected)


def test_presence_and_frequency_follow_the_output_counts_row_by_row() -> None:
    logits = torch.zeros(3, 10)
    seen = SeenTokens(torch.tensor([4, 4, 5]), torch.tensor([0, 2, 3]))  # row n saw the first n... tokens
    values = Penalties(presence=0.5, frequency=0.25)
    context = PenaltyContext.of(values, torch.tensor([8]), torch.tensor([4, 6]), 10, seen)
    penalised = apply_penalties(logits, context)
    counts = [{4: 1, 6: 1}, {4: 3, 6: 1}, {4: 3, 6: 1, 5: 1}]
    for row, row_counts in enumerate(counts):
        expected = torch.zeros(10)
        for token, count in row_counts.items():
            expected[token] = -(0.5 + 0.25 * count)
        torch.testing.assert_close(penalised[row], expected)  # the prompt id 8 is not penalised


def _oracle_ar(case: str, prompt: list[int], max_new: int, values: dict) -> list[int]:
    """Greedy AR with a full causal forward per token (no cache) and the penalties written out here."""
    backend = backend_for(case)
    eos, mask = set(backend.config.eos_token_ids), backend.config.mask_token_id
    repetition = RepetitionPenaltyLogitsProcessor(values.get("repetition_penalty", 1.0))
    output: list[int] = []
    while len(output) < max_new:
        ids = prompt + output
        logits = raw_step(backend, backend.new_cache(len(ids)), ids, causal(len(ids)))[-1:]
        logits = repetition(torch.tensor([ids]), logits)[0]
        for token in set(output):
            logits[token] -= values.get("presence_penalty", 0.0) + values.get("frequency_penalty", 0.0) * output.count(
                token
            )
        logits[mask] = float("-inf")  # the product default: the mask id is never emitted
        output.append(int(logits.argmax()))
        if output[-1] in eos:
            break
    return output


@pytest.mark.parametrize("values", PENALTIES)
def test_greedy_ar_with_penalties_equals_the_oracle(values: dict) -> None:
    for case in FIXTURE_CASES:
        backend = backend_for(case)
        for prompt in _prompts(case, backend.config.vocab_size, 3):
            result = generate(backend, prompt, "ar", GenerationParams(max_new_tokens=24, **values))
            assert result.new_ids == _oracle_ar(case, prompt, 24, values), (case, prompt)


@pytest.mark.parametrize("values", PENALTIES)
@pytest.mark.parametrize("case", FIXTURE_CASES)
@pytest.mark.parametrize(("mode", "block"), [("linear-spec", 8), ("quadratic-spec", 8)])
def test_greedy_self_speculation_with_penalties_equals_greedy_ar(
    case: str, mode: str, block: int, values: dict
) -> None:
    backend = backend_for(case)
    changed = accepted_more_than_one = 0
    for prompt in _prompts(case, backend.config.vocab_size, 12):
        params = GenerationParams(max_new_tokens=40, block_length=block, **values)
        ar = generate(backend, prompt, "ar", params)
        spec = generate(backend, prompt, mode, params)
        assert spec.new_ids == ar.new_ids, prompt
        assert spec.finish_reason == ar.finish_reason
        plain = generate(backend, prompt, "ar", GenerationParams(max_new_tokens=40))
        changed += plain.new_ids != ar.new_ids
        accepted_more_than_one += sum(length > 1 for length in spec.acceptance_lengths)
    assert changed > 0  # the penalties do change the output, so the equality is not the unpenalised one
    if case == "tiny_b8_spec_lora":
        assert accepted_more_than_one > 0  # drafts are accepted under penalties too


@pytest.mark.parametrize("mode", ["diffusion", "linear-spec", "quadratic-spec", "ar"])
def test_a_repetition_penalty_reduces_repeats_in_every_mode(mode: str) -> None:
    backend = backend_for("tiny_b8")
    repeats = {}
    for penalty in (1.0, 3.0):
        total = 0
        for prompt in _prompts("tiny_b8", backend.config.vocab_size, 6):
            result = generate(backend, prompt, mode, GenerationParams(max_new_tokens=32, repetition_penalty=penalty))
            total += len(result.new_ids) - len(set(result.new_ids))
        repeats[penalty] = total
    assert repeats[3.0] < repeats[1.0], repeats
