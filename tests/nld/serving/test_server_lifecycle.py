"""A real `nld serve` wrapper, killed or stopped: tritonserver, its Python-backend stubs, its three ports,
its scratch folder and its shared memory do not outlive it (SIGKILL's folder goes at the next start)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nld.models import default_model_dir
from nld.serving import server
from nld.serving.repository import RepositorySettings, write_repository

pytestmark = pytest.mark.server

BOUND_S = 15.0  # how long a killed run's processes may take to go


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    settings = RepositorySettings(str(default_model_dir()), max_batch=2, kv_blocks=64)
    return write_repository(tmp_path_factory.mktemp("lifecycle") / "repo", settings)


class Run:
    """One `nld serve` subprocess on free loopback ports."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.ports = [server.free_port() for _ in range(3)]
        ports = [f"--{name}-port={port}" for name, port in zip(("grpc", "http", "metrics"), self.ports, strict=True)]
        self.wrapper = subprocess.Popen(
            [sys.executable, "-m", "nld.cli", "serve", str(repo), *ports],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            process_group=0,  # like a terminal's foreground job: Ctrl-C goes to this group
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell ignores it
        )

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        line = b""
        while not line.startswith(b"ready:"):
            assert self.wrapper.poll() is None, self.wrapper.stderr.read().decode()
            assert time.monotonic() < deadline, "no ready: line"
            if select.select([self.wrapper.stdout], [], [], 0.5)[0]:
                line = self.wrapper.stdout.readline()

    def processes(self) -> dict[int, list[str]]:
        """Live processes whose command line names the repository: the wrapper, tritonserver, its stubs."""
        found = {}
        for entry in Path("/proc").iterdir():
            try:
                args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if entry.name.isdigit() and any(str(self.repo) in arg for arg in args):
                found[int(entry.name)] = args
        return found

    def tritonserver(self) -> tuple[dict[int, list[str]], list[int], Path]:
        """(tritonserver's and the stubs' command lines, the stub pids, the run's scratch folder)."""
        found = {pid: args for pid, args in self.processes().items() if pid != self.wrapper.pid}
        stubs = [pid for pid, args in found.items() if args[0].endswith("triton_python_backend_stub")]
        backends = next(a for args in found.values() for a in args if a.startswith("--backend-directory="))
        return found, stubs, Path(backends.split("=", 1)[1]).parent

    def listening(self) -> list[int]:
        open_ports = []
        for port in self.ports:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    open_ports.append(port)
        return open_ports

    def wait_all_gone(self) -> float:
        """Seconds until no process of the run is left and no port of it accepts a connection."""
        began = time.monotonic()
        while self.processes() or self.listening():
            left = {pid: args[0] for pid, args in self.processes().items()}
            assert time.monotonic() - began < BOUND_S, f"left after {BOUND_S} s: {left}, ports {self.listening()}"
            time.sleep(0.1)
        return time.monotonic() - began


@pytest.fixture
def run(repo: Path) -> Iterator[Run]:
    started = Run(repo)
    yield started
    for pid in [started.wrapper.pid, *started.processes()]:  # whatever a failed test left
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    started.wrapper.wait()


def shared_memory(workdir: Path) -> list[Path]:
    return sorted(Path("/dev/shm").glob(f"{workdir.name}_*"))


def test_sigkill_of_nld_serve_leaves_no_tritonserver_and_the_next_start_cleans_up(run: Run) -> None:
    run.wait_ready()
    _, stubs, workdir = run.tritonserver()
    assert stubs and workdir.is_dir() and len(run.listening()) == 3
    run.wrapper.kill()
    run.wrapper.wait()
    seconds = run.wait_all_gone()
    print(f"SIGKILL of nld serve (ready) -> tritonserver, stubs and ports gone in {seconds:.2f} s")
    assert workdir.is_dir()  # a SIGKILLed wrapper cannot clean up: the next start does
    assert workdir in server.remove_stale_runs()
    assert not workdir.exists() and not shared_memory(workdir)


def test_sigkill_while_the_model_loads_leaves_no_stub(run: Run) -> None:
    deadline = time.monotonic() + 240.0
    while not any(args[0].endswith("triton_python_backend_stub") for args in run.processes().values()):
        assert run.wrapper.poll() is None and time.monotonic() < deadline, "no stub started"
        time.sleep(0.05)
    time.sleep(1.0)  # well into the model's initialize()
    _, stubs, workdir = run.tritonserver()
    assert stubs and run.wrapper.poll() is None
    run.wrapper.kill()
    run.wrapper.wait()
    seconds = run.wait_all_gone()
    print(f"SIGKILL of nld serve (loading) -> tritonserver and stubs gone in {seconds:.2f} s")
    server.remove_stale_runs()
    assert not workdir.exists() and not shared_memory(workdir)


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_sigterm_and_ctrl_c_stop_cleanly_and_leave_nothing(run: Run, how: str) -> None:
    run.wait_ready()
    _, _, workdir = run.tritonserver()
    if how == "SIGTERM":
        run.wrapper.terminate()
    else:
        os.killpg(run.wrapper.pid, signal.SIGINT)  # what a terminal sends its foreground job
    _, stderr = run.wrapper.communicate(timeout=60)
    assert run.wrapper.returncode == 0 and b"tritonserver stopped" in stderr, stderr.decode()
    assert run.wait_all_gone() < 1.0  # gone before the wrapper exits
    assert not workdir.exists() and not shared_memory(workdir)
