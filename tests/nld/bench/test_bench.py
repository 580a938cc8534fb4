"""A few-second smoke run of `nld bench` on the built-in model, and the numbers' consistency."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nld.bench.crossover import find_crossover, read_auto_threshold
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
    written = json.loads((tmp_path / "out" / "bench.json").read_text())
    records, context = written["records"], written["context"]
    assert context["date"].startswith("20") and context["versions"]["torch"] and context["versions"]["python"]
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
    out = tmp_path / "out"
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "histograms.png").stat().st_size
    crossover = json.loads((out / "crossover.json").read_text())
    assert [row["concurrency"] for row in crossover["levels"]] == [1, 2] and crossover["max_level"] == 2


def test_crossover_is_the_first_level_where_ar_catches_up(tmp_path: Path) -> None:
    def record(mode: str, level: int, rate: float) -> dict:
        return {"mode": mode, "concurrency": level, "output_tokens_per_s": rate}

    sweep = [record("ar", 1, 50), record("ar", 4, 180), record("ar", 16, 600)]
    sweep += [record("linear-spec", 1, 150), record("linear-spec", 4, 200), record("linear-spec", 16, 400)]
    crossover = find_crossover(sweep)
    assert crossover["auto_threshold"] == 16
    path = tmp_path / "crossover.json"
    path.write_text(json.dumps(crossover))
    assert read_auto_threshold(path) == 16
    never = find_crossover([r for r in sweep if r["concurrency"] < 16])
    assert never["auto_threshold"] is None
    path.write_text(json.dumps({"crossover": never}))  # a bench.json works too
    assert read_auto_threshold(path) == 5  # speculate up to the highest level measured


def test_built_in_prompts_cover_the_speed_bench_categories() -> None:
    categories = {prompt.category for prompt in load_prompts()}
    assert {"coding", "math", "reasoning", "writing", "qa"} <= categories


def test_bad_prompt_files_and_settings_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n{"text": "no prompt"}\n')
    with pytest.raises(NLDError, match=r"bad\.jsonl, line 2: needs a non-empty string field 'prompt'"):
        load_prompts(bad)
    assert main(["bench", "--modes", "ar,beam", "--out", str(tmp_path / "o")]) == 2
    assert "--modes: unknown beam" in capsys.readouterr().err
    assert main(["bench", "--concurrency", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--concurrency: every level must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_repo_takes_the_auto_threshold_from_a_crossover_file(tmp_path: Path) -> None:
    crossover = tmp_path / "crossover.json"
    crossover.write_text(json.dumps({"auto_threshold": 3, "max_level": 16, "levels": []}))
    assert main(["repo", "--output", str(tmp_path / "repo"), "--auto-threshold", str(crossover)]) == 0
    settings = json.loads((tmp_path / "repo" / "nld_repository.json").read_text())
    assert settings["auto_threshold"] == 3


def test_roofline_companion_compares_only_on_the_target(tmp_path: Path) -> None:
    from nld.bench.roofline import roofline_markdown, roofline_rows
    from nld.builder.plan import make_plan
    from nld.builder.skus import get_sku
    from nld.config import load_config
    from nld.models import default_model_dir

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(make_plan(load_config(default_model_dir()), get_sku("rtx-pro-6000"), "fp16").as_dict()))
    records = [
        {"mode": "ar", "concurrency": 1, "tokens_per_forward": 1.0, "output_tokens_per_s_per_user": 50.0},
        {"mode": "linear-spec", "concurrency": 1, "tokens_per_forward": 0.9, "output_tokens_per_s_per_user": 30.0},
        {"mode": "ar", "concurrency": 4, "tokens_per_forward": 1.0, "output_tokens_per_s_per_user": 20.0},
    ]
    rows = roofline_rows(plan, records, "cpu")
    assert [row["mode"] for row in rows] == ["ar", "linear-spec"]
    ar = rows[0]
    assert ar["target"] == "rtx-pro-6000" and not ar["measured_on_target"] and ar["share_of_roofline"] is None
    assert ar["roofline_at_measured_tpf"] == ar["roofline_tokens_per_s"]  # AR's assumed TPF is its measured 1.0
    spec = rows[1]
    expected = spec["roofline_tokens_per_s"] * 0.9 / spec["assumed_tokens_per_forward"]
    assert spec["roofline_at_measured_tpf"] == pytest.approx(expected, rel=1e-3)
    assert "| ar | rtx-pro-6000 |" in roofline_markdown(rows)


def test_auto_follows_a_measured_crossover(tmp_path: Path) -> None:
    """A crossover of 2 users: mode auto speculates for the first two concurrent requests, AR for the third."""
    from nld.engine import Engine, EngineSettings
    from nld.modes import GenerationParams
    from tests.nld.helpers import backend_for

    crossover = tmp_path / "crossover.json"
    crossover.write_text(json.dumps({"auto_threshold": 2, "max_level": 16, "levels": []}))
    engine = Engine(backend_for("tiny_b8_spec_lora"), EngineSettings(auto_threshold=read_auto_threshold(crossover)))
    finals = {}
    ids = [
        engine.submit([5 + i, 6, 7, 8], "auto", GenerationParams(4), lambda u: finals.update({u.request_id: u}))
        for i in range(3)
    ]
    while engine.busy:
        engine.step()
    assert [finals[i].generation.mode for i in ids] == ["linear-spec", "linear-spec", "ar"]


def test_block_length_reaches_the_speculative_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--block-length 2`: a linear-spec verify can accept at most 2 tokens; AR ignores the option."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "def add(a, b):"}\n')
    args = ["bench", "--modes", "ar,linear-spec", "--concurrency", "1", "--prompts", str(prompts), "--warmup", "0"]
    assert main([*args, "--max-new-tokens", "16", "--block-length", "2", "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    written = json.loads((tmp_path / "out" / "bench.json").read_text())
    assert written["context"]["settings"]["block_length"] == 2
    spec = written["records"][1]
    assert spec["mode"] == "linear-spec" and 1 <= spec["acceptance_length"] <= 2
    assert main(["bench", "--block-length", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--block-length must be >= 1" in capsys.readouterr().err
