"""Folders marked with the processes they belong to, so a later run can tell a dead run's leftovers
from a live run's work.

A process killed outright (SIGKILL, power loss) cannot remove what it was writing; the next run does,
by reading the folder's marker. A marker (`OWNER_FILE`) holds one JSON line per owner: pid, its start
time (so a reused pid is not mistaken for it), host and boot id. A folder is abandoned when every owner
is gone; unmarked folders and folders of another host are never touched. Linux (/proc); elsewhere the
pid alone is checked.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path

OWNER_FILE = ".nld-owner"
_PROC = Path("/proc")


def start_time(pid: int) -> int | None:
    """When `pid` started (clock ticks after boot, /proc/PID/stat field 22); None when it is gone or a
    zombie. With the pid it names one process: a reused pid has a later start time."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None


def process_identity(pid: int | None = None) -> dict[str, object]:
    """Who a process is, beyond its (reusable) pid: start time, host and boot id."""
    pid = os.getpid() if pid is None else pid
    return {"pid": pid, "start": start_time(pid), "host": socket.gethostname(), "boot": _boot_id()}


def owner_alive(owner: dict[str, object]) -> bool:
    """Whether the process an owner entry names still runs (True when that cannot be told: another host)."""
    if owner.get("host") != socket.gethostname():
        return True
    boot = _boot_id()
    if owner.get("boot") is not None and boot is not None and owner["boot"] != boot:
        return False  # rebooted since: every process of that boot is gone
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not _PROC.is_dir():  # no procfs: the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    started = start_time(pid)
    return started is not None and (owner.get("start") is None or owner["start"] == started)


def add_owner(folder: Path, pid: int | None = None) -> None:
    """Mark `folder` as belonging (also) to process `pid` (default: this process)."""
    with open(folder / OWNER_FILE, "a") as marker:
        marker.write(json.dumps(process_identity(pid)) + "\n")


def is_abandoned(folder: Path) -> bool:
    """True when `folder` has an owner marker and every process it names is gone. Unreadable or partly
    written markers count as live: such a folder is left alone."""
    try:
        owners = [json.loads(line) for line in (folder / OWNER_FILE).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return False
    if not owners or not all(isinstance(owner, dict) for owner in owners):
        return False
    return not any(owner_alive(owner) for owner in owners)


def remove_abandoned(candidates: Iterable[Path]) -> list[Path]:
    """Delete the candidate folders that are abandoned; returns them."""
    removed = []
    for folder in sorted(candidates):
        if folder.is_dir() and not folder.is_symlink() and is_abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def owned_tempdir(prefix: str, directory: Path | None = None) -> Path:
    """A new folder `<directory>/<prefix>XXXX` (default: in the temp dir) marked as this process's."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=directory))
    add_owner(folder)
    return folder


def remove_stale(prefix: str, directory: Path | None = None) -> list[Path]:
    """Delete the abandoned `<directory>/<prefix>*` folders (default: in the temp dir); returns them."""
    return remove_abandoned(Path(directory or tempfile.gettempdir()).glob(f"{prefix}*"))
