"""Request bounds (nld.limits): every parameter finite and bounded, every refusal naming its field."""

from __future__ import annotations

import math

import pytest
import torch

from nld.generate import generate
from nld.limits import BLOCK_LENGTH_CAP, GREEDY_BELOW, ParameterError, max_block_length, max_prompt_bytes
from nld.modes import GenerationParams
from nld.sampling import Sampler, select_tokens
from tests.nld.helpers import backend_for

CASE = "tiny_b8"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"temperature": math.inf}, "temperature"),
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 101.0}, "temperature"),
        ({"top_p": math.nan}, "top_p"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"threshold": math.nan}, "threshold"),
        ({"threshold": -0.1}, "threshold"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 2**31}, "max_new_tokens"),
        ({"block_length": 0}, "block_length"),
        ({"block_length": 2**31 - 1}, "block_length"),
        ({"eos_token_ids": (-1,)}, "eos_token_ids"),
    ],
)
def test_out_of_bounds_fields_are_refused_by_name(values: dict, field: str) -> None:
    with pytest.raises(ParameterError) as raised:
        GenerationParams(**values)
    assert raised.value.field == field and str(raised.value).startswith(f"{field}: ")


def test_the_edges_of_each_bound_are_accepted() -> None:
    GenerationParams(temperature=100.0, top_p=1e-30, threshold=1.0, seed=2**64 - 1, max_new_tokens=1, block_length=1)
    GenerationParams(temperature=0.0, threshold=0.0, seed=0)


def test_tiny_temperatures_decode_greedily() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    logits[:, 3] = 100.0  # a banned id with the largest logit
    greedy = select_tokens(logits, Sampler(0.0, banned_ids=(3,)))
    for temperature in (1e-40, GREEDY_BELOW / 2):
        ids, confidence = select_tokens(logits, Sampler(temperature, banned_ids=(3,)))
        assert torch.equal(ids, greedy[0]) and torch.isfinite(confidence).all()


def test_model_bounds_name_their_field() -> None:
    backend = backend_for(CASE)
    config = backend.config
    prompt = [20, 21, 22]
    for mode, cap in BLOCK_LENGTH_CAP.items():
        assert max_block_length(config, mode) == min(cap, config.max_position_embeddings // 2)
        with pytest.raises(ParameterError, match="block_length") as raised:
            generate(backend, prompt, mode, GenerationParams(max_new_tokens=4, block_length=cap + 1))
        assert raised.value.field == "block_length"
    with pytest.raises(ParameterError) as raised:
        generate(backend, prompt, "ar", GenerationParams(max_new_tokens=4, eos_token_ids=(config.vocab_size,)))
    assert raised.value.field == "eos_token_ids"
    context = config.max_position_embeddings
    with pytest.raises(ParameterError) as raised:
        generate(backend, prompt, "ar", GenerationParams(max_new_tokens=context))
    assert raised.value.field == "max_new_tokens"


def test_the_widest_allowed_quadratic_step_runs() -> None:
    backend = backend_for(CASE)
    block = BLOCK_LENGTH_CAP["quadratic-spec"]
    result = generate(backend, [20, 21, 22], "quadratic-spec", GenerationParams(max_new_tokens=8, block_length=block))
    assert len(result.new_ids) == 8


def test_the_prompt_byte_cap_covers_every_prompt_that_fits() -> None:
    assert max_prompt_bytes(1024, 82) == 1024 * 82
    assert max_prompt_bytes(16, 0) == 16  # a degenerate vocabulary still leaves one byte per token
