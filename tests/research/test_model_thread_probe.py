"""research/runtime/model_thread_probe.py measures every placement in its own process and writes them as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "research" / "runtime" / "model_thread_probe.py"


def test_every_placement_is_measured(tmp_path: Path) -> None:
    out = tmp_path / "probe.json"
    command = [sys.executable, SCRIPT, "--rounds", "1", "--prompts", "1", "--max-new-tokens", "4", "--no-compile"]
    done = subprocess.run([*command, "--out", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [row["placement"] for row in rows] == ["main", "split", "one-thread"]
    assert rows[0]["vs_main"] == 1.0
    for row in rows:
        assert row["tok_s"] > 0 and "| " + row["placement"] + " |" in done.stdout
        assert len(row["rounds"][0]["cpu_ms_per_token_by_thread"]) >= 1
