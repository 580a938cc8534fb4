"""research/runtime/ort_attention_probe.py times every operator it names and writes them as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "research" / "runtime" / "ort_attention_probe.py"


def test_every_operator_is_timed(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    command = [sys.executable, SCRIPT, "--capacity", "64", "--lengths", "8,60", "--runs", "3", "--out", out]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| 8 |" in done.stdout and "| 60 |" in done.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [row["length"] for row in rows] == [8, 60]
    for row in rows:
        assert {"attention_nonpad_us", "gqa_shared_buffer_us", "scatter_aliased_us"} <= set(row)
        assert all(value > 0 for key, value in row.items() if key.endswith("_us"))


def test_lengths_must_fit_the_capacity(tmp_path: Path) -> None:
    command = [sys.executable, SCRIPT, "--capacity", "64", "--lengths", "64", "--out", tmp_path / "x.json"]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and "--lengths must lie in (0, 64)" in done.stderr
