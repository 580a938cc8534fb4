"""Against the real tritonserver on free loopback ports: streamed gRPC output equals in-process generation,
concurrency, cancellation, bad requests, and the Prometheus metrics."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nld.errors import NLDError
from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams
from nld.serving.client import NLDClient, read_metrics
from nld.serving.server import ServerSettings, TritonServer
from nld.tokenizer import NLDTokenizer
from tests.nld.conftest import SERVER_KV_BLOCKS
from tests.nld.helpers import wait_for_idle_pool

pytestmark = pytest.mark.server

PROMPT = "def fibonacci(n):"
KV_BLOCKS = SERVER_KV_BLOCKS


@pytest.fixture(scope="module")
def server(tiny_server: ServerSettings) -> ServerSettings:
    return tiny_server


@pytest.fixture(scope="module")
def local() -> tuple:
    return load_backend(str(default_model_dir())), NLDTokenizer.from_dir(default_model_dir())


def expected(local: tuple, prompt: str, mode: str, max_tokens: int) -> list[int]:
    backend, tokenizer = local
    return generate(backend, tokenizer.encode_prompt(prompt), mode, GenerationParams(max_tokens)).new_ids


@pytest.mark.parametrize("mode", list(MODES))
def test_streamed_output_equals_in_process_generate(server: ServerSettings, local: tuple, mode: str) -> None:
    with NLDClient(server.grpc_url) as client:
        streamed = client.generate(PROMPT, mode=mode, max_tokens=40)
        whole = client.generate(PROMPT, mode=mode, max_tokens=40, stream=False)
    tokenizer = local[1]
    assert streamed.output_ids == expected(local, PROMPT, mode, 40)
    assert streamed.text == tokenizer.decode(streamed.output_ids)
    assert len(streamed.pieces) > 1 and len(whole.pieces) == 1
    assert "".join(streamed.pieces) == whole.text and streamed.output_ids == whole.output_ids
    assert streamed.finish_reason == "length" and streamed.nfe and streamed.tokens_per_forward
    backend, tokenizer = local
    generation = generate(backend, tokenizer.encode_prompt(PROMPT), mode, GenerationParams(40))
    assert streamed.forwards == generation.forwards
    assert streamed.acceptance_lengths == generation.acceptance_lengths
    assert streamed.mode == whole.mode == mode


def test_sixteen_concurrent_mixed_requests(server: ServerSettings, local: tuple) -> None:
    jobs = [(f"{PROMPT}\n    # case {i}\n", list(MODES)[i % len(MODES)]) for i in range(16)]

    def run(job: tuple[str, str]) -> list[int]:
        with NLDClient(server.grpc_url) as client:
            return client.generate(job[0], mode=job[1], max_tokens=24).output_ids

    with ThreadPoolExecutor(16) as pool:
        outputs = list(pool.map(run, jobs))
    for (prompt, mode), output in zip(jobs, outputs, strict=True):
        assert output == expected(local, prompt, mode, 24), mode
    metrics = wait_for_idle_pool(server.metrics_url)
    assert metrics["nld_kv_blocks_in_use"] == 0 and metrics["nld_kv_blocks_free"] == KV_BLOCKS


def test_cancelled_request_stops_and_frees_kv(server: ServerSettings) -> None:
    before = read_metrics(server.metrics_url)
    with NLDClient(server.grpc_url) as client:
        result = client.generate(PROMPT, mode="ar", max_tokens=600, cancel_after=3)
    assert result.finish_reason == "cancelled"
    metrics = wait_for_idle_pool(server.metrics_url)
    assert metrics["nld_kv_blocks_in_use"] == 0
    generated = metrics["nld_tokens_total"] - before.get("nld_tokens_total", 0)
    assert generated < 100  # it stopped long before its 600 tokens
    with NLDClient(server.grpc_url) as client:  # and the server keeps serving
        assert len(client.generate(PROMPT, mode="ar", max_tokens=4).output_ids) == 4


def test_a_client_timeout_cancels_the_request_instead_of_waiting_for_it(server: ServerSettings) -> None:
    with NLDClient(server.grpc_url) as client:
        began = time.monotonic()
        with pytest.raises(NLDError, match="no response"):
            client.generate(PROMPT, timeout=1.0, mode="diffusion", block_length=128, max_tokens=512, stream=False)
        assert time.monotonic() - began < 5  # it waited 20 s for the whole request before
    metrics = wait_for_idle_pool(server.metrics_url, timeout=30)
    assert metrics["nld_kv_blocks_in_use"] == 0


@pytest.mark.parametrize(
    ("text", "options", "name"),
    [
        ("", {}, "text_input"),
        (None, {"max_tokens": 8}, "text_input"),  # no prompt (with no input at all, tritonserver refuses it)
        (PROMPT, {"max_tokens": 0}, "max_tokens"),
        (PROMPT, {"max_tokens": 100_000}, "max_tokens"),
        (PROMPT, {"mode": "beam"}, "mode"),
        (PROMPT, {"threshold": 1.5}, "threshold"),
        (PROMPT, {"block_length": 0}, "block_length"),
    ],
)
def test_bad_requests_get_errors_naming_the_input(
    server: ServerSettings, text: str | None, options: dict, name: str
) -> None:
    with NLDClient(server.grpc_url) as client:
        with pytest.raises(NLDError, match=name):
            client.generate(text, **options)
        assert len(client.generate(PROMPT, mode="ar", max_tokens=2).output_ids) == 2


def test_prometheus_endpoint_serves_our_metrics(server: ServerSettings) -> None:
    with NLDClient(server.grpc_url) as client:
        client.generate(PROMPT, mode="linear-spec", max_tokens=16)
    metrics = read_metrics(server.metrics_url)
    assert metrics['nld_requests_total{mode="linear-spec"}'] >= 1
    assert metrics["nld_tokens_total"] >= 16 and metrics["nld_forwards_total"] >= 1
    assert metrics["nld_accepted_tokens_total"] >= 16
    assert "nld_kv_blocks_in_use" in metrics and "nld_kv_blocks_free" in metrics


def test_client_command_prints_the_answer(server: ServerSettings, local: tuple) -> None:
    options = ["--mode", "quadratic-spec", "--max-tokens", "16", "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "nld.cli", "client", "--url", server.grpc_url, "--prompt", PROMPT, *options],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    record = json.loads(run.stdout)
    assert record["output_ids"] == expected(local, PROMPT, "quadratic-spec", 16)
    assert record["mode"] == "quadratic-spec"


def test_client_command_says_which_mode_auto_ran_and_counts_forwards(server: ServerSettings) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nld.cli", "client", "--url", server.grpc_url, "--prompt", PROMPT, "--mode", "auto"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    summary = run.stderr.strip().splitlines()[-1]
    assert summary.startswith(("[auto -> linear-spec]", "[auto -> ar]")), summary
    assert " forwards (" in summary and "tokens/forward), nfe " in summary, summary


def test_client_command_without_a_server_names_the_url() -> None:
    from nld.serving.server import free_port

    url = f"127.0.0.1:{free_port()}"
    run = subprocess.run(
        [sys.executable, "-m", "nld.cli", "client", "--url", url, "--prompt", PROMPT],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert f"no Triton server answers at {url}" in run.stderr


def test_serve_refuses_a_folder_that_is_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(NLDError, match="not a model repository"):
        TritonServer(ServerSettings(tmp_path)).start()
