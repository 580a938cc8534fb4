"""`nld bench --url` against the real tritonserver: the same table and JSON, and the same tokens per
forward and acceptance as the in-process run over the same prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nld.cli import main
from nld.serving.server import ServerSettings

pytestmark = pytest.mark.server


def test_served_and_in_process_runs_agree(tmp_path: Path, tiny_server: ServerSettings) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"category": "coding", "prompt": "def add(a, b):"}\n{"prompt": "class Stack:\\n"}\n')
    common = ["--modes", "ar,linear-spec,quadratic-spec", "--concurrency", "1,2", "--prompts", str(prompts)]
    common += ["--max-new-tokens", "12", "--warmup", "0"]
    served = ["--url", tiny_server.grpc_url, "--metrics-url", tiny_server.metrics_url]
    assert main(["bench", *common, *served, "--out", str(tmp_path / "served")]) == 0
    assert main(["bench", *common, "--out", str(tmp_path / "local")]) == 0
    remote = json.loads((tmp_path / "served" / "bench.json").read_text())["records"]
    local = json.loads((tmp_path / "local" / "bench.json").read_text())["records"]
    assert len(remote) == len(local) == 6
    for ours, theirs in zip(remote, local, strict=True):
        assert (ours["mode"], ours["concurrency"]) == (theirs["mode"], theirs["concurrency"])
        assert ours["tokens_per_forward"] == theirs["tokens_per_forward"]
        assert ours["acceptance_length"] == theirs["acceptance_length"]
        assert ours["output_tokens"] == theirs["output_tokens"] == 24
        assert ours["batched_forwards_per_s"] > 0 and ours["runtime_overhead_share"] is None
        product = ours["tokens_per_forward"] * ours["forwards_per_s_per_user"]
        assert product == pytest.approx(ours["output_tokens_per_s_per_user"], rel=0.01)
    assert (tmp_path / "served" / "pareto.png").exists() and (tmp_path / "served" / "crossover.json").exists()
