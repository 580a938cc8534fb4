"""End to end on NVIDIA Dynamo: the real frontend and one real nld worker on loopback (file discovery,
TCP request plane, ZMQ event plane: no etcd, no NATS), queried with the real `openai` client."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import time
import urllib.request
from collections.abc import Iterator

import pytest

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(importlib.util.find_spec("dynamo") is None, reason="NVIDIA Dynamo (ai-dynamo) not installed"),
    pytest.mark.skipif(importlib.util.find_spec("openai") is None, reason="the openai client is not installed"),
]

HOST = "127.0.0.1"
NAME = "nld-tiny"
PROMPT = "def add(a, b):"
READY_SECONDS = 180


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _models(url: str) -> list[str]:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
            return [model["id"] for model in json.load(response)["data"]]
    except OSError:
        return []


@pytest.fixture(scope="module")
def dynamo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The frontend + one worker; yields the frontend's /v1 URL and stops both afterwards."""
    from nld.serving.lifetime import BoundProcess

    root = tmp_path_factory.mktemp("dynamo")
    env = {
        **os.environ,
        "HOME": str(root),  # Dynamo caches model cards under $HOME
        "DYN_FILE_KV": str(root / "discovery"),
        "DYN_DISCOVERY_BACKEND": "file",
        "DYN_REQUEST_PLANE": "tcp",
        "DYN_TCP_RPC_HOST": HOST,
        "DYN_TCP_RESPONSE_STREAM_HOST": HOST,
        "DYN_SYSTEM_HOST": HOST,
        "DYN_EVENT_PLANE_HOST": HOST,
        "DYN_LOG": "warn",
    }
    port = _free_port()
    url = f"http://{HOST}:{port}/v1"
    frontend_cmd = [
        sys.executable, "-m", "dynamo.frontend", "--discovery-backend", "file", "--request-plane", "tcp",
        "--event-plane", "zmq", "--http-host", HOST, "--http-port", str(port),
    ]  # fmt: skip
    worker_cmd = [sys.executable, "-m", "nld.serving.dynamo_worker", "--name", NAME]
    logs = {name: open(root / f"{name}.log", "wb") for name in ("frontend", "worker")}  # noqa: SIM115
    processes = [
        BoundProcess(worker_cmd, env=env, stdout=logs["worker"], stderr=logs["worker"]),
        BoundProcess(frontend_cmd, env=env, stdout=logs["frontend"], stderr=logs["frontend"]),
    ]
    try:
        deadline = time.monotonic() + READY_SECONDS
        while NAME not in _models(url):
            dead = [p for p in processes if p.process.poll() is not None]
            if dead or time.monotonic() > deadline:
                text = "\n".join(f"--- {n}\n{(root / f'{n}.log').read_text()[-3000:]}" for n in logs)
                pytest.fail(f"Dynamo did not list {NAME} ({'a process died' if dead else 'timeout'}):\n{text}")
            time.sleep(0.5)
        yield url
    finally:
        for process in reversed(processes):
            process.stop(timeout=15)
        for log in logs.values():
            log.close()


@pytest.fixture(scope="module")
def client(dynamo: str):  # type: ignore[no-untyped-def]
    import openai

    return openai.OpenAI(base_url=dynamo, api_key="unused", max_retries=0, timeout=120)


def test_completion_equals_in_process_generate(client) -> None:  # type: ignore[no-untyped-def]
    from nld.generate import generate, load_backend
    from nld.models import default_model_dir
    from nld.modes import GenerationParams
    from nld.tokenizer import NLDTokenizer

    model = default_model_dir()
    tokenizer = NLDTokenizer.from_dir(model)
    assert tokenizer is not None
    prompt_ids = tokenizer.encode_prompt(PROMPT)  # BOS included, as `nld generate` does
    expected = generate(load_backend(str(model)), prompt_ids, "linear-spec", GenerationParams(max_new_tokens=24))

    response = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0.0)
    choice = response.choices[0]
    assert choice.text == tokenizer.decode(expected.new_ids)
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == len(expected.new_ids)
    assert choice.finish_reason == ("stop" if expected.finish_reason == "stop" else "length")
    stream = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=24, temperature=0.0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == choice.text


def test_bad_requests_are_400_naming_the_field(client) -> None:  # type: ignore[no-untyped-def]
    import openai

    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model=NAME, prompt=PROMPT, max_tokens=5000)  # over the 1024-token context
    with pytest.raises(openai.BadRequestError, match="mode"):
        client.completions.create(
            model=NAME, prompt=PROMPT, max_tokens=8, extra_body={"nvext": {"annotations": ["mode=bogus"]}}
        )
    response = client.completions.create(model=NAME, prompt=PROMPT, max_tokens=4, temperature=0.0)
    assert response.choices[0].text  # the worker stays healthy
