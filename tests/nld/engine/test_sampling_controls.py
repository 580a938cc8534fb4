"""Stop strings, penalties and log-probabilities through the batching engine: requests that use them,
batched with requests that do not, equal their one-at-a-time generation, and their streams add up."""

from __future__ import annotations

import pytest

from nld.engine import Engine, EngineSettings
from nld.generate import generate, load_backend
from nld.limits import ParameterError
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams
from nld.tokenizer import NLDTokenizer
from tests.nld.engine.test_scheduler import Collector

PROMPTS = ["def add(a, b):", "import os\n", "class Stack:", "for i in range("]
CONTROLS = [
    {},
    {"repetition_penalty": 1.4, "logprobs": 2},
    {"presence_penalty": 0.8, "frequency_penalty": 0.4},
    {"stop": ("\n\n", "return")},
    {"stop": (")",), "logprobs": 0, "repetition_penalty": 1.2},
]


def test_controls_batched_equal_solo_generation() -> None:
    backend = load_backend(str(default_model_dir()))
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    engine = Engine(backend, EngineSettings(max_batch=16), tokenizer.tokenizer)
    collector = Collector()
    requests = []
    for index, (mode, controls) in enumerate((mode, controls) for mode in MODES for controls in CONTROLS):
        prompt = tokenizer.encode_prompt(PROMPTS[index % len(PROMPTS)])
        params = GenerationParams(max_new_tokens=32, **controls)
        requests.append((engine.submit(prompt, mode, params, collector.listen), prompt, mode, params))
    while engine.busy:
        engine.step()
    stopped = 0
    for request_id, prompt, mode, params in requests:
        expected = generate(backend, prompt, mode, params, tokenizer=tokenizer.tokenizer)
        final = collector.final(request_id)
        assert final.error is None and final.generation is not None
        assert final.generation.new_ids == expected.new_ids, (mode, params)
        assert final.generation.text == expected.text
        updates = collector.updates[request_id]
        assert "".join(update.text for update in updates) == expected.text  # the stream adds up
        assert collector.streamed(request_id) == expected.new_ids
        if params.logprobs is not None:
            streamed = [entry for update in updates for entry in update.logprobs or []]
            assert len(streamed) == len(expected.new_ids)
            assert [entry.logprob for entry in streamed] == pytest.approx(
                [entry.logprob for entry in expected.logprobs or []], abs=1e-4
            )
        else:
            assert all(update.logprobs is None for update in updates)
        stopped += bool(params.stop) and expected.finish_reason == "stop"
    assert stopped >= 4  # the stop strings did end requests


def test_stop_strings_need_the_engine_tokenizer() -> None:
    engine = Engine(load_backend(str(default_model_dir())))
    with pytest.raises(ParameterError, match="stop: this model has no tokenizer"):
        engine.submit([1, 2, 3], "ar", GenerationParams(stop=("x",)), lambda update: None)


def test_an_engine_that_streams_ids_decodes_text_only_for_stop_strings() -> None:
    backend = load_backend(str(default_model_dir()))
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    engine = Engine(backend, EngineSettings(max_batch=4), tokenizer.tokenizer, wants_text=False)
    collector = Collector()
    prompt = tokenizer.encode_prompt(PROMPTS[0])
    plain, stopped = GenerationParams(max_new_tokens=24), GenerationParams(max_new_tokens=24, stop=("\n\n", "return"))
    ids = [engine.submit(prompt, "linear-spec", params, collector.listen) for params in (plain, stopped)]
    while engine.busy:
        engine.step()
    with_text = generate(backend, prompt, "linear-spec", stopped, tokenizer=tokenizer.tokenizer)
    assert collector.final(ids[0]).generation.text == ""  # type: ignore[union-attr]
    assert collector.streamed(ids[0]) == generate(backend, prompt, "linear-spec", plain).new_ids
    assert collector.streamed(ids[1]) == with_text.new_ids and with_text.finish_reason == "stop"
