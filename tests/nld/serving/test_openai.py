"""`nld serve-openai --workers 2` end to end: the real Dynamo frontend and two real nld workers on
loopback (file discovery, TCP request plane, ZMQ event plane), queried with the real `openai` client
and compared with in-process generation."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cache

import jinja2.sandbox
import pytest

from nld.chat_template import PLAIN_CHAT_TEMPLATE
from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams
from nld.serving.client import read_metrics
from nld.serving.served_names import served_names
from tests.nld.serving.openai_run import (
    HOST,
    NAME,
    OpenAIRun,
    builtin_tokenizer,
    listening_addresses,
    openai_client,
    process_tree,
    running,
)

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(importlib.util.find_spec("dynamo") is None, reason="NVIDIA Dynamo (ai-dynamo) not installed"),
    pytest.mark.skipif(importlib.util.find_spec("openai") is None, reason="the openai client is not installed"),
]

PROMPT = "def add(a, b):"
MESSAGES = [{"role": "system", "content": "# utilities"}, {"role": "user", "content": "def add(a, b):"}]
PROMPTS = [
    "def add(a, b):",
    "import os\n",
    "class Stack:",
    "for i in range(",
    "def main():\n",
    "x = [",
    "# sort",
    "try:",
]
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIRun]:
    yield from running("--workers", "2")


@pytest.fixture(scope="module")
def client(server: OpenAIRun):  # type: ignore[no-untyped-def]
    return openai_client(server)


tokenizer = builtin_tokenizer


@cache
def expected(prompt_ids: tuple[int, ...], mode: str, max_tokens: int = MAX_TOKENS) -> tuple[str, int, str]:
    """(text, completion tokens, OpenAI finish reason) of in-process greedy generation."""
    result = generate(
        load_backend(str(default_model_dir())), list(prompt_ids), mode, GenerationParams(max_new_tokens=max_tokens)
    )
    reason = "stop" if result.finish_reason == "stop" else "length"
    return tokenizer().decode(result.new_ids), len(result.new_ids), reason


def completion_ids(prompt: str) -> tuple[int, ...]:
    return tuple(tokenizer().encode_prompt(prompt))  # BOS included, as `nld generate` does


def chat_ids(messages: list[dict]) -> tuple[int, ...]:
    """The messages rendered as transformers renders a chat template (jinja2, trim/lstrip blocks)."""
    environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    text = environment.from_string(PLAIN_CHAT_TEMPLATE.read_text()).render(
        messages=messages, add_generation_prompt=True
    )
    return tuple(tokenizer().encode_prompt(text, chat=False))


def in_process_mode(name: str) -> str:
    mode = served_names(NAME)[name]
    return "linear-spec" if mode in (None, "auto") else mode  # the default mode; auto speculates when idle


def test_models_lists_a_name_per_mode(client) -> None:  # type: ignore[no-untyped-def]
    listed = {model.id for model in client.models.list().data}
    assert set(served_names(NAME)) <= listed
    assert {f"{NAME}:{mode}" for mode in MODES} <= listed


@pytest.mark.parametrize("name", list(served_names(NAME)))
def test_completions_and_chat_equal_in_process_generation(client, name: str) -> None:  # type: ignore[no-untyped-def]
    mode = in_process_mode(name)
    text, tokens, reason = expected(completion_ids(PROMPT), mode)
    response = client.completions.create(model=name, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0)
    assert (response.choices[0].text, response.choices[0].finish_reason) == (text, reason)
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (len(completion_ids(PROMPT)), tokens)
    stream = client.completions.create(model=name, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == text

    assert list(chat_ids(MESSAGES)) == tokenizer().encode_messages(MESSAGES)  # as `nld generate --messages`
    text, tokens, reason = expected(chat_ids(MESSAGES), mode)
    chat = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.0)
    assert (chat.choices[0].message.content, chat.choices[0].finish_reason) == (text, reason)
    assert chat.usage.completion_tokens == tokens
    stream = client.chat.completions.create(
        model=name, messages=MESSAGES, max_tokens=MAX_TOKENS, temperature=0.0, stream=True
    )
    assert "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices) == text


def test_stop_string_cuts_the_text(client) -> None:  # type: ignore[no-untyped-def]
    text, _, _ = expected(completion_ids(PROMPT), "ar")
    stop = text.strip()[:3]
    response = client.completions.create(
        model=f"{NAME}:ar", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, stop=[stop]
    )
    assert response.choices[0].text == text[: text.index(stop)]
    assert response.choices[0].finish_reason == "stop"


def test_stop_token_ids_end_the_completion_after_that_token(client) -> None:  # type: ignore[no-untyped-def]
    from nld.generate import generate, load_backend

    ids = completion_ids(PROMPT)
    full = generate(
        load_backend(str(default_model_dir())), list(ids), "ar", GenerationParams(max_new_tokens=MAX_TOKENS)
    )
    stop = full.new_ids[3]
    cut = full.new_ids[: full.new_ids.index(stop) + 1]
    response = client.completions.create(
        model=f"{NAME}:ar", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0, extra_body={"stop_token_ids": [stop]}
    )
    assert response.choices[0].finish_reason == "stop" and response.usage.completion_tokens == len(cut)
    assert response.choices[0].text == tokenizer().decode(cut[:-1])  # Dynamo hides the stop token's text


def worker_requests(server: OpenAIRun) -> dict[int, float]:
    """{worker pid: requests its engine started}, from each worker's /metrics."""
    counts = {}
    for pid, port in server.workers().items():
        samples = read_metrics(f"http://{HOST}:{port}/metrics")
        counts[pid] = sum(value for key, value in samples.items() if key.startswith("nld_requests_total"))
    return counts


def test_32_concurrent_streams_equal_their_solo_runs_on_both_workers(client, server: OpenAIRun) -> None:  # type: ignore[no-untyped-def]
    cases = [(prompt, f"{NAME}:{mode}") for mode in MODES for prompt in PROMPTS]
    assert len(cases) == 32
    before = worker_requests(server)

    def stream(case: tuple[str, str]) -> str:
        prompt, name = case
        chunks = client.completions.create(model=name, prompt=prompt, max_tokens=16, temperature=0.0, stream=True)
        return "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)

    with ThreadPoolExecutor(len(cases)) as pool:
        outputs = list(pool.map(stream, cases))
    for (prompt, name), output in zip(cases, outputs, strict=True):
        assert output == expected(completion_ids(prompt), in_process_mode(name), 16)[0], (prompt, name)
    after = worker_requests(server)
    served = {pid: after[pid] - before.get(pid, 0) for pid in after}
    print(f"requests per worker: {served}")
    assert len(served) == 2 and all(count > 0 for count in served.values()) and sum(served.values()) == 32


def test_bad_requests_are_400_naming_the_field_and_workers_stay_healthy(client, server: OpenAIRun) -> None:  # type: ignore[no-untyped-def]
    import openai

    bad = {
        "max_tokens": {"max_tokens": 5000},  # over the 1024-token context
        "emperature": {"temperature": 5.0},  # Dynamo's own check: [0, 2]
        "op_p": {"top_p": 2.0},
        "block_length": {"max_tokens": 8, "extra_body": {"nvext": {"annotations": ["block_length=4096"]}}},
        "threshold": {"max_tokens": 8, "extra_body": {"nvext": {"annotations": ["threshold=high"]}}},
        "op_k": {"max_tokens": 8, "extra_body": {"top_k": -2}},  # Dynamo's own check: >= -1
        "resence penalty": {"max_tokens": 8, "presence_penalty": 5.0},  # Dynamo's own check: [-2, 2]
        "min_tokens": {"max_tokens": 8, "extra_body": {"min_tokens": 2}},
        "prompt_logprobs": {"max_tokens": 8, "echo": True},
    }
    for field, options in bad.items():
        with pytest.raises(openai.BadRequestError, match=field):
            client.completions.create(model=f"{NAME}:diffusion", prompt=PROMPT, **options)
    with pytest.raises(openai.NotFoundError, match="Model not found"):  # as OpenAI's API answers it
        client.completions.create(model=f"{NAME}:bogus", prompt=PROMPT, max_tokens=8)
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=NAME, messages=MESSAGES, max_tokens=5000)
    one = {"top_k": 1}  # sampling among one id: the greedy output, whatever the temperature
    sampled = client.completions.create(
        model=f"{NAME}:ar", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=1.5, extra_body=one
    )
    assert sampled.choices[0].text == expected(completion_ids(PROMPT), "ar")[0]
    for _ in range(4):  # both workers (round-robin) still serve
        response = client.completions.create(model=f"{NAME}:ar", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0.0)
        assert response.choices[0].text == expected(completion_ids(PROMPT), "ar")[0]


def test_health_and_metrics(server: OpenAIRun) -> None:
    with urllib.request.urlopen(f"http://{HOST}:{server.port}/health", timeout=10) as response:
        assert json.load(response)["status"] == "healthy"
    with urllib.request.urlopen(f"http://{HOST}:{server.port}/metrics", timeout=10) as response:
        assert "dynamo_frontend_requests_total" in response.read().decode()
    for port in server.workers().values():
        samples = read_metrics(f"http://{HOST}:{port}/metrics")
        for name in ("nld_tokens_total", "nld_forwards_total", "nld_accepted_tokens_total", "nld_kv_blocks_free"):
            assert name in samples, name


def test_bench_through_the_openai_api_counts_what_in_process_counts(server: OpenAIRun) -> None:
    """`nld bench --openai`'s sweep: same tokens, tokens/forward and acceptance as in process (greedy,
    one user at a time), from the workers' counters."""
    from nld.bench.prompts import BenchPrompt
    from nld.bench.sweep import BenchSettings, in_process, run_sweep, served_openai

    prompts = [BenchPrompt("code", text) for text in PROMPTS[:3]]
    settings = BenchSettings(modes=("linear-spec",), concurrency=(1,), max_new_tokens=16, warmup=0)
    metrics = [f"http://{HOST}:{port}/metrics" for port in server.workers().values()]
    (remote,) = run_sweep(served_openai(server.url, NAME, metrics, tokenizer(), prompts, settings), 3, settings)
    (local,) = run_sweep(
        in_process(load_backend(str(default_model_dir())), tokenizer(), prompts, settings), 3, settings
    )
    for key in ("requests", "output_tokens", "tokens_per_forward", "acceptance_length"):
        assert remote[key] == local[key], key
    assert remote["ttft_ms_p50"] > 0 and remote["itl_ms_p50"] is not None


def test_everything_listens_on_loopback_only(server: OpenAIRun) -> None:
    addresses = listening_addresses(process_tree(server.process.pid))
    print(f"listening: {addresses}")
    assert f"{HOST}:{server.port}" in addresses
    assert len(addresses) >= 1 + 2 * 2  # frontend HTTP, each worker's request plane and status server
    assert all(address.startswith(f"{HOST}:") for address in addresses), addresses


def test_a_worker_killed_mid_stream_costs_the_client_nothing(client, server: OpenAIRun) -> None:  # type: ignore[no-untyped-def]
    """Last in the module: it leaves one worker."""
    long = 400
    text, _, _ = expected(completion_ids(PROMPT), "ar", long)
    before = worker_requests(server)
    stream = client.completions.create(model=f"{NAME}:ar", prompt=PROMPT, max_tokens=long, temperature=0.0, stream=True)
    pieces = []
    for chunk in stream:
        pieces.append(chunk.choices[0].text if chunk.choices else "")
        if len(pieces) == 5:
            after = worker_requests(server)
            serving = [pid for pid in after if after[pid] > before.get(pid, 0)]
            assert len(serving) == 1
            os.kill(serving[0], signal.SIGKILL)
            killed_at = time.monotonic()
    print(f"stream finished {time.monotonic() - killed_at:.1f} s after the kill, {len(pieces)} chunks")
    assert "".join(pieces) == text
    assert len(server.workers()) == 1 and server.process.poll() is None
