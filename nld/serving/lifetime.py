"""Child processes that do not outlive the process that started them, however it dies.

`BoundProcess` starts a command in its own process group and ties the group to this process:
- the kernel sends the child `death_signal` when this process dies, even by SIGKILL (PR_SET_PDEATHSIG,
  set between fork and exec; re-checked against the race where this process died first);
- a guard process (`python -m nld.serving.lifetime`) holds the read end of a pipe only this process
  writes to; at its EOF, which is this process's death, it waits up to `grace` seconds for the child
  to exit and then SIGKILLs what is left of the group: the child's own children (tritonserver's
  Python-backend stubs outlive it when it dies while the model loads).
`FolderJanitor` is the same pipe trick for a scratch folder: its process removes the folder once this
process and every other owner its marker names (`nld.owners`) are gone.
Linux only (prctl, /proc, waitid).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from nld.owners import is_abandoned, start_time

PR_SET_PDEATHSIG = 1

_spawner: ThreadPoolExecutor | None = None
_spawner_lock = threading.Lock()


def _death_binding(death_signal: int) -> Callable[[], None]:
    """The child-side half of `spawn`: runs between fork and exec."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork
    parent = os.getpid()

    def bind() -> None:
        # A handler inherited from Python would swallow the signal before exec resets it.
        signal.signal(death_signal, signal.SIG_DFL)
        if prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl ran: nobody will signal us
            os._exit(128 + death_signal)

    return bind


def spawn(command: Sequence[str], death_signal: int = signal.SIGTERM, **popen_options: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen whose child gets `death_signal` when this process dies, however it dies.

    Linux sends it when the *thread* that forked exits, so a call from any thread but the main one
    forks on one long-lived spawner thread instead.
    """
    if threading.current_thread() is not threading.main_thread():
        return _spawner_thread().submit(_spawn_here, command, death_signal, popen_options).result()
    return _spawn_here(command, death_signal, popen_options)


def _spawn_here(command: Sequence[str], death_signal: int, popen_options: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(command), preexec_fn=_death_binding(int(death_signal)), **popen_options)


def _spawner_thread() -> ThreadPoolExecutor:
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = ThreadPoolExecutor(1, thread_name_prefix="nld-spawner")
        return _spawner


class BoundProcess:
    """`command` in its own process group, which goes when this process goes (see the module doc)."""

    def __init__(
        self,
        command: Sequence[str],
        death_signal: int = signal.SIGTERM,
        grace: float = 10.0,
        **popen_options: Any,
    ) -> None:
        self.process = spawn(command, death_signal, process_group=0, **popen_options)
        read_end, self._guard_pipe = os.pipe()  # both close on exec: only the guard gets a copy
        try:
            self._guard: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-P", "-m", __name__, str(self.process.pid), str(grace)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                process_group=0,  # a terminal's Ctrl-C is for this process, not for the guard
            )
        except BaseException:
            os.close(self._guard_pipe)
            self.process.kill()
            self.process.wait()
            raise
        finally:
            os.close(read_end)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` s; then SIGKILL the rest of the group. Returns the exit code."""
        if self._guard is None:  # stopped already
            return self.process.wait()
        if self.process.returncode is None:  # not reaped: its pid still names its group
            os.kill(self.process.pid, signal.SIGTERM)
            if not _exited(self.process.pid, timeout):
                os.kill(self.process.pid, signal.SIGKILL)
        _exited(self.process.pid, float("inf"))
        # Children it left behind. Reaped already (by a poll()), the pid is still reserved while any of
        # them lives; with none left the kernel would have to hand it out again within microseconds.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        code = self.process.wait()
        self._release_guard()
        return code

    def _release_guard(self) -> None:
        if self._guard is None:
            return
        with contextlib.suppress(BrokenPipeError):
            os.write(self._guard_pipe, b"x")  # stand down: the group is already gone
        os.close(self._guard_pipe)
        self._guard.wait()
        self._guard = None


def _exited(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` s for our child `pid` to exit, without reaping it (a zombie keeps its pid,
    so its process group cannot be reused meanwhile). True also when it was reaped already."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


class FolderJanitor:
    """Removes `folder` after this process dies, however it dies, once the folder's other owners are
    gone too (waiting up to `patience` s for them). `release()` when this process removed it itself."""

    def __init__(self, folder: Path, patience: float = 30.0) -> None:
        read_end, self._pipe = os.pipe()
        try:
            self._process: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-P", "-m", __name__, "--janitor", str(folder), str(patience)],
                stdin=read_end,
                stdout=subprocess.DEVNULL,
                process_group=0,
            )
        except BaseException:
            os.close(self._pipe)
            raise
        finally:
            os.close(read_end)

    def release(self) -> None:
        if self._process is None:
            return
        with contextlib.suppress(BrokenPipeError):
            os.write(self._pipe, b"x")
        os.close(self._pipe)
        self._process.wait()
        self._process = None


def _parent_died() -> bool:
    """Block until stdin's EOF (the parent died: True) or a byte (stand down: False), signals ignored."""
    for number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, signal.SIG_IGN)
    return not os.read(0, 1)


def janitor(folder: Path, patience: float) -> None:
    """The janitor's work: at the parent's death, wait for the folder's owners to go, then remove it."""
    if not _parent_died():
        return
    deadline = time.monotonic() + patience
    while not is_abandoned(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    if is_abandoned(folder):
        shutil.rmtree(folder, ignore_errors=True)


def guard(group: int, grace: float) -> None:
    """The guard's work: wait for stdin's EOF (our parent died), give the group's leader `grace` s to
    exit on its death signal, then SIGKILL the group. A byte on stdin means stand down."""
    if not _parent_died():
        return
    deadline = time.monotonic() + grace
    while start_time(group) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)


if __name__ == "__main__":
    if sys.argv[1] == "--janitor":
        janitor(Path(sys.argv[2]), float(sys.argv[3]))
    else:
        guard(int(sys.argv[1]), float(sys.argv[2]))
