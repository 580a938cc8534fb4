"""Penalties, log-probabilities and stop strings on the OpenAI API (`nld serve-openai`, the real Dynamo
frontend and an nld worker, the real `openai` client): equal to in-process generation in every mode,
and a stop string ends the request's compute in the engine (the worker's token counter says so)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from functools import cache

import pytest

from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import MODES, Generation, GenerationParams
from nld.serving.client import read_metrics
from tests.nld.serving.openai_run import HOST, NAME, OpenAIRun, builtin_tokenizer, openai_client, running

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(importlib.util.find_spec("dynamo") is None, reason="NVIDIA Dynamo (ai-dynamo) not installed"),
    pytest.mark.skipif(importlib.util.find_spec("openai") is None, reason="the openai client is not installed"),
]

PROMPT = "def add(a, b):"
MAX_TOKENS = 32
PENALTIES = {"presence_penalty": 0.8, "frequency_penalty": 0.4, "repetition_penalty": 1.3}


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIRun]:
    yield from running("--workers", "1")


@pytest.fixture(scope="module")
def client(server: OpenAIRun):  # type: ignore[no-untyped-def]
    return openai_client(server)


tokenizer = builtin_tokenizer


@cache
def in_process(mode: str, **controls: object) -> Generation:
    params = GenerationParams(max_new_tokens=MAX_TOKENS, **controls)  # type: ignore[arg-type]
    backend = load_backend(str(default_model_dir()))
    return generate(backend, tokenizer().encode_prompt(PROMPT), mode, params, tokenizer=tokenizer().tokenizer)


def worker_tokens(server: OpenAIRun) -> float:
    (port,) = server.workers().values()
    return read_metrics(f"http://{HOST}:{port}/metrics")["nld_tokens_total"]


@pytest.mark.parametrize("mode", list(MODES))
def test_penalties_equal_in_process(client, mode: str) -> None:  # type: ignore[no-untyped-def]
    expected = in_process(mode, **PENALTIES)
    assert expected.new_ids != in_process(mode).new_ids  # the penalties change this output
    extra = {"repetition_penalty": PENALTIES["repetition_penalty"]}
    response = client.completions.create(
        model=f"{NAME}:{mode}",
        prompt=PROMPT,
        max_tokens=MAX_TOKENS,
        temperature=0.0,
        presence_penalty=PENALTIES["presence_penalty"],
        frequency_penalty=PENALTIES["frequency_penalty"],
        extra_body=extra,
    )
    assert response.choices[0].text == expected.text


@pytest.mark.parametrize("mode", ["ar", "diffusion", "quadratic-spec"])
def test_completion_logprobs_equal_in_process(client, mode: str) -> None:  # type: ignore[no-untyped-def]
    expected = in_process(mode, logprobs=3)
    assert expected.logprobs is not None
    response = client.completions.create(
        model=f"{NAME}:{mode}", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, logprobs=3
    )
    logprobs = response.choices[0].logprobs
    assert logprobs.token_logprobs == pytest.approx([entry.logprob for entry in expected.logprobs], abs=1e-4)
    for alternatives, entry in zip(logprobs.top_logprobs, expected.logprobs, strict=True):
        assert max(alternatives.values()) == pytest.approx(entry.top[0][1], abs=1e-4)


def test_chat_logprobs_equal_in_process(client) -> None:  # type: ignore[no-untyped-def]
    messages = [{"role": "user", "content": PROMPT}]
    params = GenerationParams(max_new_tokens=MAX_TOKENS, logprobs=2)
    backend = load_backend(str(default_model_dir()))
    expected = generate(backend, tokenizer().encode_messages(messages), "ar", params)
    chat = client.chat.completions.create(
        model=f"{NAME}:ar", messages=messages, max_tokens=MAX_TOKENS, temperature=0.0, logprobs=True, top_logprobs=2
    )
    content = chat.choices[0].logprobs.content
    assert expected.logprobs is not None and len(content) == len(expected.logprobs)
    for token, entry in zip(content, expected.logprobs, strict=True):
        assert token.logprob == pytest.approx(entry.logprob, abs=1e-4)
        assert [top.logprob for top in token.top_logprobs] == pytest.approx([value for _, value in entry.top], abs=1e-4)


@pytest.mark.parametrize("mode", ["ar", "linear-spec", "diffusion"])
def test_a_stop_string_cuts_the_text_and_ends_the_compute(client, server: OpenAIRun, mode: str) -> None:  # type: ignore[no-untyped-def]
    full = in_process(mode)
    stop = full.text.strip()[4:8]
    expected = in_process(mode, stop=(stop,))
    assert expected.finish_reason == "stop" and len(expected.new_ids) < len(full.new_ids)
    before = worker_tokens(server)
    response = client.completions.create(
        model=f"{NAME}:{mode}", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, stop=[stop]
    )
    assert response.choices[0].text == expected.text
    assert response.choices[0].finish_reason == "stop"
    assert worker_tokens(server) - before == len(expected.new_ids)  # the engine made no token past the stop
