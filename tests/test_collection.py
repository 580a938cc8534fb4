"""Every test file of the project is collected: no installed pytest plugin may drop one silently
(ai-dynamo's plugins ignored tests/nld/convert/test_trtllm_quant.py until pyproject.toml disabled them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_test_file_is_collected() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(TESTS)],
        capture_output=True,
        text=True,
        cwd=TESTS.parent,
        timeout=300,
    )
    collected = {line.split("::", 1)[0] for line in run.stdout.splitlines() if "::" in line}
    files = {str(path.relative_to(TESTS.parent)) for path in TESTS.rglob("test_*.py")}
    assert files - collected == set(), run.stdout[-2000:] + run.stderr[-2000:]
