"""research/runtime/attention_ab.py runs both attention forms and reports them side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "research" / "runtime" / "attention_ab.py"


def test_both_forms_are_measured_side_by_side(tmp_path: Path) -> None:
    out = tmp_path / "ab.json"
    command = [sys.executable, SCRIPT, "--points", "ar@1", "--rounds", "1", "--max-new-tokens", "4", "--prompts", "1"]
    done = subprocess.run([*command, "--out", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| ar | 1 |" in done.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["split_tok_s"] > 0 and row["joined_tok_s"] > 0 and row["ratio"] > 0
