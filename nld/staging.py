"""Write a folder whole or not at all: build it in a temporary sibling, then rename it into place.

Each staging folder (`.NAME.xxxxxxxx` beside `NAME`) holds a marker naming its owner process
(nld.owners: pid, its start time, host and boot), removed just before the rename. A process killed
outright (SIGKILL, power loss) cannot remove its staging folder, so every new `staged_directory` for
`NAME` first removes the sibling staging folders whose owner is gone, and leaves those of live owners
(or of another host) alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nld.owners import OWNER_FILE, add_owner, remove_abandoned


def remove_dead_staging(output: str | Path) -> list[Path]:
    """Remove the staging folders of `output` whose owner process is gone; returns what was removed.
    Folders without a readable marker (being created, or from another tool) are left alone."""
    output = Path(output)
    try:
        siblings = list(output.parent.glob(f".{output.name}.*"))
    except OSError:
        return []
    return remove_abandoned(siblings)


@contextmanager
def staged_directory(output: str | Path) -> Iterator[Path]:
    """Yield a staging folder next to `output` (empty but for its owner marker); on success it replaces
    `output` (world-readable), on any error it is removed and `output` is left as it was. Staging folders
    of `output` left by dead processes are removed first."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(output)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        add_owner(staging)
        yield staging
        (staging / OWNER_FILE).unlink()
        staging.chmod(0o755)  # mkdtemp makes 0700; outputs are read by other users and processes
        for path in staging.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        if output.exists():
            shutil.rmtree(output)
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
