"""Scratch folders that a dead run does not leave behind for long.

`owned_tempdir` makes `<tempdir>/<prefix>XXXX` and marks it with its owners (pid and start time);
`remove_stale` deletes the marked folders whose owners are all gone. A run that is SIGKILLed cannot
clean up, so the next run does. Unmarked folders and folders with a live owner are never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from nld.serving.lifetime import start_time

OWNER_FILE = ".nld-owner"  # one "pid starttime" line per process the folder belongs to


def add_owner(folder: Path, pid: int | None = None) -> None:
    """Mark `folder` as belonging (also) to process `pid` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    started = start_time(pid)
    if started is not None:
        with open(folder / OWNER_FILE, "a") as marker:
            marker.write(f"{pid} {started}\n")


def owned_tempdir(prefix: str, directory: Path | None = None) -> Path:
    """A new folder `<directory>/<prefix>XXXX` (default: in the temp dir) marked as this process's."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    add_owner(folder)
    return folder


def is_stale(folder: Path) -> bool:
    """True when `folder` has an owner mark and none of the processes it names is alive."""
    try:
        lines = (folder / OWNER_FILE).read_text().splitlines()
        owners = [tuple(map(int, line.split())) for line in lines if line.strip()]
        return bool(owners) and all(start_time(pid) != started for pid, started in owners)
    except (OSError, ValueError):  # unmarked, being written, or not ours: leave it
        return False


def remove_stale(prefix: str, directory: Path | None = None) -> list[Path]:
    """Delete the `<directory>/<prefix>*` folders (default: the temp dir) whose owners are all gone;
    returns them."""
    removed = []
    for folder in sorted(Path(directory or tempfile.gettempdir()).glob(f"{prefix}*")):
        if folder.is_dir() and not folder.is_symlink() and is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed
