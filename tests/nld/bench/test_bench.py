"""A few-second smoke run of `nld bench` on the built-in model, and the numbers' consistency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nld.bench.prompts import load_prompts
from nld.cli import main
from nld.errors import NLDError

KEYS = {
    "mode",
    "concurrency",
    "tokens_per_forward",
    "acceptance_length",
    "output_tokens_per_s",
    "output_tokens_per_s_per_user",
    "forwards_per_s_per_user",
    "ttft_ms_p50",
    "ttft_ms_p90",
    "ttft_ms_p99",
    "itl_ms_p50",
    "itl_ms_p90",
    "itl_ms_p99",
    "runtime_overhead_share",
}


def test_bench_smoke_writes_table_and_consistent_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"category": "coding", "prompt": "def add(a, b):"}\n{"prompt": "import os\\n"}\n')
    args = ["bench", "--modes", "ar,linear-spec", "--concurrency", "1,2", "--prompts", str(prompts)]
    assert main([*args, "--max-new-tokens", "8", "--warmup", "0", "--out", str(tmp_path / "out")]) == 0
    table = capsys.readouterr().out
    assert table.startswith("| mode | users | TPF |") and table.count("\n| linear-spec |") == 2
    records = json.loads((tmp_path / "out" / "bench.json").read_text())["records"]
    assert [(r["mode"], r["concurrency"]) for r in records] == [
        ("ar", 1),
        ("ar", 2),
        ("linear-spec", 1),
        ("linear-spec", 2),
    ]
    for record in records:
        assert set(record) >= KEYS and record["requests"] == 2 and record["output_tokens"] == 16
        product = record["tokens_per_forward"] * record["forwards_per_s_per_user"]
        assert product == pytest.approx(record["output_tokens_per_s_per_user"], rel=0.01)
        assert 0 <= record["runtime_overhead_share"] < 1 and record["ttft_ms_p50"] > 0
    ar, spec = records[0], records[2]
    assert ar["tokens_per_forward"] == 1.0 and ar["acceptance_length"] is None
    assert spec["acceptance_length"] >= 1 and spec["tokens_per_forward"] <= spec["acceptance_length"]
    # the decoded tokens do not depend on batching: the same TPF at every concurrency
    assert records[2]["tokens_per_forward"] == records[3]["tokens_per_forward"]


def test_built_in_prompts_cover_the_speed_bench_categories() -> None:
    categories = {prompt.category for prompt in load_prompts()}
    assert {"coding", "math", "reasoning", "writing", "qa"} <= categories


def test_bad_prompt_files_and_settings_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{"text": "no prompt"}\n')
    with pytest.raises(NLDError, match=r"bad\.jsonl:2: needs a non-empty string field 'prompt'"):
        load_prompts(bad)
    assert main(["bench", "--modes", "ar,beam", "--out", str(tmp_path / "o")]) == 2
    assert "--modes: unknown beam" in capsys.readouterr().err
    assert main(["bench", "--concurrency", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--concurrency: every level must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
