"""Write a folder whole or not at all: build it in a temporary sibling, then rename it into place.

Each staging folder (`.NAME.xxxxxxxx` beside `NAME`) holds a marker naming its owner process (pid, its
start time, host and boot), removed just before the rename. A process killed outright (SIGKILL, power
loss) cannot remove its staging folder, so every new `staged_directory` for `NAME` first removes the
sibling staging folders whose owner is gone, and leaves those of live owners (or of another host) alone.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OWNER_FILE = ".nld-staging-owner.json"
_PROC = Path("/proc")


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, ...; starttime is index 19), None without the process."""
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses


def _boot_id() -> str | None:
    try:
        return (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return None


def process_identity(pid: int | None = None) -> dict[str, object]:
    """Who a process is, beyond its (reusable) pid: start time since boot, host and boot id."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid)
    return {"pid": pid, "start": stat[19] if stat else None, "host": socket.gethostname(), "boot": _boot_id()}


def owner_alive(owner: dict[str, object]) -> bool:
    """Whether the process a marker names still runs (True when that cannot be told: another host)."""
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
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):  # gone, or killed and not yet reaped
        return False
    return owner.get("start") is None or stat[19] == owner["start"]  # another start: the pid was reused


def remove_dead_staging(output: str | Path) -> list[Path]:
    """Remove the staging folders of `output` whose owner process is gone; returns what was removed.
    Folders without a readable marker (being created, or from another tool) are left alone."""
    output = Path(output)
    removed = []
    try:
        entries = list(output.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(f".{output.name}.") or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            owner = json.loads((entry / OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(owner, dict) and not owner_alive(owner):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _write_owner(staging: Path) -> None:
    partial = staging / f"{OWNER_FILE}.partial"
    partial.write_text(json.dumps(process_identity()))
    os.replace(partial, staging / OWNER_FILE)  # a reader sees a whole marker or none


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
        _write_owner(staging)
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
