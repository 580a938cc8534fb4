"""Stop strings, penalties and log-probabilities over Triton (the real tritonserver and tritonclient):
every mode, streamed and not, equal to in-process generation; bad values refused by input name."""

from __future__ import annotations

import re
from functools import cache

import pytest

from nld.errors import NLDError
from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import MODES, Generation, GenerationParams
from nld.serving.client import NLDClient
from nld.serving.server import ServerSettings
from nld.tokenizer import NLDTokenizer

pytestmark = pytest.mark.server

PROMPT = "def add(a, b):"


@cache
def in_process(mode: str, **controls: object) -> Generation:
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    params = GenerationParams(max_new_tokens=32, **controls)  # type: ignore[arg-type]
    backend = load_backend(str(default_model_dir()))
    return generate(backend, tokenizer.encode_prompt(PROMPT), mode, params, tokenizer=tokenizer.tokenizer)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("mode", list(MODES))
def test_controls_over_triton_equal_in_process(tiny_server: ServerSettings, mode: str, stream: bool) -> None:
    full = in_process(mode)
    stop = full.text.strip()[4:8]
    expected = in_process(mode, stop=(stop,), repetition_penalty=1.3, frequency_penalty=0.2, logprobs=2)
    assert expected.finish_reason == "stop" or stop not in expected.text
    with NLDClient(tiny_server.grpc_url) as client:
        result = client.generate(
            PROMPT,
            mode=mode,
            max_tokens=32,
            stream=stream,
            stop_words=[stop],
            repetition_penalty=1.3,
            frequency_penalty=0.2,
            top_logprobs=2,
        )
    assert (result.text, result.output_ids, result.finish_reason) == (
        expected.text,
        expected.new_ids,
        expected.finish_reason,
    )
    assert expected.logprobs is not None
    assert result.logprobs == pytest.approx([entry.logprob for entry in expected.logprobs], abs=1e-4)
    assert [[token for token, _ in top] for top in result.top_logprobs] == [
        [token for token, _ in entry.top] for entry in expected.logprobs
    ]


def test_empty_stop_words_mean_none(tiny_server: ServerSettings) -> None:
    expected = in_process("ar")
    with NLDClient(tiny_server.grpc_url) as client:
        result = client.generate(PROMPT, mode="ar", max_tokens=32, stop_words=[""])
    assert result.output_ids == expected.new_ids  # as TensorRT-LLM clients send "" for no stop words


def test_return_log_probs_alone_gives_the_chosen_ids_only(tiny_server: ServerSettings) -> None:
    expected = in_process("ar", logprobs=0)
    with NLDClient(tiny_server.grpc_url) as client:
        result = client.generate(PROMPT, mode="ar", max_tokens=32, return_log_probs=True)
    assert result.logprobs == pytest.approx([entry.logprob for entry in expected.logprobs or []], abs=1e-4)
    assert all(top == [] for top in result.top_logprobs)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"repetition_penalty": 0.0}, "input 'repetition_penalty': must lie in (0, 10]"),
        ({"presence_penalty": 3.0}, "input 'presence_penalty': must lie in [-2, 2]"),
        ({"frequency_penalty": float("nan")}, "input 'frequency_penalty': must be finite"),
        ({"top_logprobs": 21}, "input 'top_logprobs': must lie in [0, 20]"),
        ({"stop_words": ["x" * 1025]}, "input 'stop_words': a stop string of 1025 bytes exceeds 1024"),
        ({"stop_words": ["x"] * 17}, "input 'stop_words': 17 values exceed 16"),
        ({"stop_words": ["x" * 257]}, "input 'stop_words': a stop string of 257 characters exceeds 256"),
    ],
)
def test_bad_controls_are_refused_by_input_name(tiny_server: ServerSettings, inputs: dict, message: str) -> None:
    with NLDClient(tiny_server.grpc_url) as client, pytest.raises(NLDError, match=re.escape(message)):
        client.generate(PROMPT, mode="ar", max_tokens=4, **inputs)
