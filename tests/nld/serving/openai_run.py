"""A real `nld serve-openai` subprocess for the tests: started as a user starts it, its ready line read,
its process tree, sockets and run folder looked up in /proc."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from nld.models import default_model_dir
from nld.owners import OWNER_FILE, start_time
from nld.serving.openai_server import WORKDIR_PREFIX
from nld.serving.server import free_port
from nld.tokenizer import NLDTokenizer

HOST = "127.0.0.1"
NAME = "nld-tiny"
READY_S = 240.0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant."""
    tree, queue = [], [pid]
    while queue:
        current = queue.pop()
        if start_time(current) is not None:
            tree.append(current)
            queue += children(current)
    return tree


def command_line(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        return (Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")).split("\0")
    return []


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").glob("*"):
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _address(hex_address: str) -> str:
    host, port = hex_address.split(":")
    if len(host) == 8:  # IPv4, little-endian
        return ".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0)) + f":{int(port, 16)}"
    return f"[{host}]:{int(port, 16)}"  # IPv6: kept in /proc's spelling


def listening_addresses(pids: list[int]) -> dict[str, int]:
    """{local address: pid} of every listening TCP socket and bound UDP socket the processes hold,
    read from /proc/net as `ss -ltnup` does."""
    owners = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = {}
    for table in ("tcp", "tcp6", "udp", "udp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                listening = fields[3] == "0A" if table.startswith("tcp") else True
                if listening and fields[9] in owners:
                    found[_address(fields[1])] = owners[fields[9]]
    return found


class OpenAIRun:
    """One `nld serve-openai` process on a free loopback port."""

    def __init__(self, *options: str) -> None:
        self.port = free_port(HOST)
        self.url = f"http://{HOST}:{self.port}/v1"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- a pipe nobody drains would block the servers' logging
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nld.cli", "serve-openai", "--http-port", str(self.port), *options],
            stdout=subprocess.PIPE,
            stderr=self.log,
            process_group=0,  # like a terminal's foreground job: Ctrl-C goes to this group
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell ignores it
        )

    def stderr(self) -> str:
        """What the command and its children wrote to stderr so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def wait_ready(self, timeout: float = READY_S) -> OpenAIRun:
        deadline = time.monotonic() + timeout
        line = b""
        while not line.startswith(b"ready:"):
            assert self.process.poll() is None, self.stderr()[-4000:]
            assert time.monotonic() < deadline, "no ready: line"
            if select.select([self.process.stdout], [], [], 0.5)[0]:
                line = self.process.stdout.readline()
        assert line.decode().strip() == f"ready: {self.url}"
        return self

    def workers(self) -> dict[int, int]:
        """{worker pid: its status port}."""
        found = {}
        for pid in process_tree(self.process.pid):
            args = command_line(pid)
            if "nld.serving.dynamo_worker" in args:
                found[pid] = int(args[args.index("--status-port") + 1])
        return found

    def workdir(self) -> Path:
        """The run's folder: the one in the temp dir whose owner marker names this process first."""
        for folder in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
            with contextlib.suppress(OSError):
                if f'"pid": {self.process.pid},' in (folder / OWNER_FILE).read_text().splitlines()[0]:
                    return folder
        raise AssertionError(f"no {WORKDIR_PREFIX}* folder owned by {self.process.pid}")

    def stop(self) -> None:
        """Ctrl-C, as a terminal sends it, then wait; whatever is left afterwards is killed."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        finally:
            self.kill_all()

    def kill_all(self) -> None:
        """Whatever a failed test left."""
        for pid in process_tree(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()


def running(*options: str) -> Iterator[OpenAIRun]:
    """A module fixture's body: `nld serve-openai OPTIONS`, ready, stopped with Ctrl-C afterwards."""
    run = OpenAIRun(*options)
    try:
        yield run.wait_ready()
    finally:
        run.stop()


def openai_client(run: OpenAIRun):  # type: ignore[no-untyped-def]
    """The real openai client for `run` (no retries: a failure shows at once)."""
    import openai

    return openai.OpenAI(base_url=run.url, api_key="unused", max_retries=0, timeout=120)


@cache
def builtin_tokenizer() -> NLDTokenizer:
    loaded = NLDTokenizer.from_dir(default_model_dir())
    assert loaded is not None
    return loaded
