"""research/tiny_model/tiny_draft_agreement.py on the built-in model: both tables print and the JSON holds shares."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nld.models import BUILTIN_MODEL

SCRIPT = Path(__file__).resolve().parents[2] / "research" / "tiny_model" / "tiny_draft_agreement.py"


@pytest.mark.slow
@pytest.mark.skipif(not (BUILTIN_MODEL / "config.json").exists(), reason="built-in model not trained")
def test_reports_agreement_by_position_and_cycle_tails(tmp_path: Path) -> None:
    out = tmp_path / "agreement.json"
    command = [sys.executable, SCRIPT, "--prompts", "2", "--max-new-tokens", "24", "--stride", "8", "--out", out]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "| quadratic |" in done.stdout and "| quadratic-spec |" in done.stdout
    report = json.loads(out.read_text())
    block = 8
    assert len(report["agreement"]["linear"]) == block - 1 and len(report["agreement"]["quadratic"]) == block
    assert report["agreement"]["samples"] == 2 * len(range(64, 64 + 24 - block, 8))
    for shares in (report["agreement"]["linear"], report["agreement"]["quadratic"]):
        assert all(0.0 <= share <= 1.0 for share in shares)
    for tail in report["cycles"].values():
        assert tail[0] == 1.0 and all(a >= b for a, b in itertools.pairwise(tail))
