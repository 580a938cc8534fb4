"""research/tiny_model/sweep_tiny.py end to end on the CPU: pack the data of a work folder, then train, evaluate and
prompt a variant (a few steps per phase), and report it in a table and JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nld.tiny.train import TrainSettings, prepare_data

SCRIPT = Path(__file__).resolve().parents[2] / "research" / "tiny_model" / "sweep_tiny.py"


@pytest.mark.slow
def test_pack_then_run_reports_every_variant(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    prepare_data(work, TrainSettings(), lambda message: None)
    pack = tmp_path / "pack"
    subprocess.run([sys.executable, SCRIPT, "pack", "--data", work, "--into", pack], check=True)
    assert (pack / "tokens.npz").is_file() and any((pack / "stdlib").rglob("*.py"))
    runs, out = tmp_path / "runs", tmp_path / "out"
    command = [sys.executable, SCRIPT, "run", "--pack", pack, "--grid", "smoke", "--quick", "--device", "cpu"]
    done = subprocess.run([*command, "--runs", runs, "--out", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    summary = json.loads((out / "sweep-smoke.json").read_text())
    (variant,) = summary["variants"]
    assert variant["name"] == "smoke" and "failed" not in variant
    assert variant["equals_ar"] == {"linear-spec": "2/2", "quadratic-spec": "2/2"}
    assert set(variant["demos"]) == {"def fibonacci(n):", "def is_prime(n):", "class Stack:"}
    assert variant["quadratic_tpf"] >= 1.0 and variant["perplexity"] > 1.0
    assert "| smoke |" in (out / "sweep-smoke.md").read_text()


def test_run_names_a_missing_pack(tmp_path: Path) -> None:
    command = [sys.executable, SCRIPT, "run", "--pack", tmp_path / "nothing", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode != 0 and "no tokenizer.json" in done.stderr
