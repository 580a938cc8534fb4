"""Real processes, no tritonserver: a BoundProcess and its own children go with a SIGKILLed parent,
a spawn from a short-lived thread outlives the thread, and stale scratch folders are told from live ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from nld.owners import OWNER_FILE, add_owner, owned_tempdir, process_identity, remove_stale, start_time
from nld.serving.lifetime import BoundProcess

# A parent that starts `sh`, which starts a grandchild and waits: the kernel's death signal ends the
# shell only, so the grandchild stands for tritonserver's stubs, which the guard must kill.
PARENT = """
import sys, time
from nld.serving.lifetime import BoundProcess
bound = BoundProcess(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=-1, grace=float(sys.argv[1]))
print(bound.pid, bound.process.stdout.readline().decode().strip(), flush=True)
time.sleep(300)
"""


def wait_gone(pids: list[int], timeout: float) -> float:
    """Seconds until every pid is gone or a zombie (this container's init never reaps orphans)."""
    began = time.monotonic()
    while any(start_time(pid) is not None for pid in pids):
        assert time.monotonic() - began < timeout, [pid for pid in pids if start_time(pid) is not None]
        time.sleep(0.05)
    return time.monotonic() - began


def test_child_and_grandchild_go_with_a_sigkilled_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, "1.0"], stdout=subprocess.PIPE, text=True)
    child, grandchild = map(int, parent.stdout.readline().split())
    assert start_time(child) is not None and start_time(grandchild) is not None
    parent.kill()
    parent.wait()
    assert wait_gone([child, grandchild], timeout=5.0) < 5.0


def test_stop_ends_the_group_and_releases_the_guard() -> None:
    bound = BoundProcess(["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE)
    grandchild = int(bound.process.stdout.readline())
    assert bound.stop(timeout=5.0) == -signal.SIGTERM
    assert start_time(grandchild) is None
    assert bound.stop() == -signal.SIGTERM  # a second stop is harmless


def test_a_spawn_from_a_short_lived_thread_outlives_the_thread() -> None:
    made: list[BoundProcess] = []
    thread = threading.Thread(target=lambda: made.append(BoundProcess(["sleep", "300"])))
    thread.start()
    thread.join()
    time.sleep(0.5)  # the death signal would have come at once
    try:
        assert made[0].process.poll() is None
    finally:
        made[0].stop(timeout=5.0)


def test_remove_stale_removes_dead_owners_folders_only(tmp_path: Path) -> None:
    ended = subprocess.Popen(["sleep", "300"])
    dead = owned_tempdir("nld-test-", tmp_path)
    (dead / OWNER_FILE).write_text("")  # owned by `ended` only
    add_owner(dead, ended.pid)
    ended.kill()
    ended.wait()
    live = owned_tempdir("nld-test-", tmp_path)  # this process
    add_owner(live, ended.pid)  # a dead co-owner does not make it stale
    reused = owned_tempdir("nld-test-", tmp_path)  # our pid, but another process's start time
    (reused / OWNER_FILE).write_text(json.dumps({**process_identity(), "start": start_time(os.getpid()) - 1}) + "\n")
    unmarked = tmp_path / "nld-test-unmarked"
    unmarked.mkdir()
    assert remove_stale("nld-test-", tmp_path) == sorted([dead, reused])
    assert live.is_dir() and unmarked.is_dir() and not dead.exists() and not reused.exists()


JANITOR_PARENT = """
import sys, time
from pathlib import Path
from nld.owners import owned_tempdir
from nld.serving.lifetime import FolderJanitor
folder = owned_tempdir("nld-janitor-test-", Path(sys.argv[1]))
janitor = FolderJanitor(folder, patience=5.0)
if sys.argv[2] == "release":
    import shutil
    shutil.rmtree(folder)
    janitor.release()
print(folder, flush=True)
time.sleep(300)
"""


def test_folder_janitor_removes_a_sigkilled_owners_folder(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", JANITOR_PARENT, str(tmp_path), "keep"], stdout=subprocess.PIPE, text=True
    )
    folder = Path(parent.stdout.readline().strip())
    assert folder.is_dir()
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while folder.exists():
        assert time.monotonic() < deadline, "the janitor left the folder"
        time.sleep(0.05)


def janitor_processes(folder: Path) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--janitor" in args and str(folder).encode() in args and start_time(int(entry.name)) is not None:
            found.append(int(entry.name))
    return found


def test_a_released_janitor_is_gone_before_its_owner(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", JANITOR_PARENT, str(tmp_path), "release"], stdout=subprocess.PIPE, text=True
    )
    folder = Path(parent.stdout.readline().strip())
    try:
        assert not folder.exists() and not janitor_processes(folder)
    finally:
        parent.kill()
        parent.wait()
