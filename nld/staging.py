"""Write a folder whole or not at all: build it in a temporary sibling, then rename it into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_directory(output: str | Path) -> Iterator[Path]:
    """Yield an empty staging folder next to `output`; on success it replaces `output` (world-readable),
    on any error it is removed and `output` is left as it was."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes 0700; outputs are read by other users and processes
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
