"""`nld serve-openai`: NVIDIA Dynamo's OpenAI frontend in front of N nld workers, on one machine.

File discovery (a folder the processes share), the TCP request plane and the ZMQ event plane: no etcd,
no NATS. Every socket binds `host` (loopback by default): the frontend's HTTP port, its internal one,
each worker's request-plane and status ports. The frontend retries a request on another worker when
one dies mid-stream (`--migration-limit`).

Nothing outlives the command: the frontend and the workers are `BoundProcess`es (the kernel signals
them when it dies, even by SIGKILL, and their guards kill what is left), and the run's folder (Dynamo's
$HOME and discovery folder) goes with a `FolderJanitor`, or at the next start.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nld.errors import NLDError
from nld.owners import add_owner, owned_tempdir, remove_stale
from nld.serving.lifetime import BoundProcess, FolderJanitor
from nld.serving.served_names import DEFAULT_ENDPOINT, served_names
from nld.serving.server import port_free

WORKDIR_PREFIX = "nld-openai-"
ROUTER_FLAGS = {  # --router: the frontend's flags
    "round-robin": ["--router-mode", "round-robin"],
    "least-loaded": ["--router-mode", "least-loaded"],
    "random": ["--router-mode", "random"],
    "kv": ["--router-mode", "kv", "--no-router-kv-events"],  # approximate: the engine publishes no KV events
}
MAX_WORKERS = 64
NAMESPACE = "nld"


@dataclass(frozen=True)
class OpenAISettings:
    """What `nld serve-openai` runs; `worker_options` go to every worker unchanged (model, backend...)."""

    name: str
    worker_options: tuple[str, ...] = ()
    workers: int = 1
    router: str = "round-robin"
    host: str = "127.0.0.1"
    http_port: int = 8000
    migration_limit: int = 3
    log_level: str = "warn"

    def check(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise NLDError(f"--workers must be in [1, {MAX_WORKERS}], got {self.workers}")
        if self.router not in ROUTER_FLAGS:
            raise NLDError(f"--router must be one of {', '.join(ROUTER_FLAGS)}, got {self.router!r}")
        if not 0 < self.http_port < 65536:
            raise NLDError(f"--http-port must be in [1, 65535], got {self.http_port}")
        if not 0 <= self.migration_limit <= 100:
            raise NLDError(f"--migration-limit must be in [0, 100], got {self.migration_limit}")
        if not self.name or any(c.isspace() for c in self.name):
            raise NLDError(f"--name must be a non-empty name without spaces, got {self.name!r}")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}/v1"


@dataclass
class Worker:
    index: int
    host: str
    status_port: int
    process: BoundProcess

    @property
    def metrics_url(self) -> str:
        """The worker's status server: Dynamo's and the engine's (nld_*) metrics."""
        return f"http://{self.host}:{self.status_port}/metrics"


def _get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


class OpenAIServer:
    """The frontend and its workers; `start()` returns once every served name is listed and every
    worker has registered, `stop()` stops them all. Also a context manager."""

    def __init__(self, settings: OpenAISettings) -> None:
        settings.check()
        self.settings = settings
        self.workers: list[Worker] = []
        self.frontend: BoundProcess | None = None
        self.workdir: Path | None = None
        self._janitor: FolderJanitor | None = None

    def environment(self) -> dict[str, str]:
        """Dynamo's settings for every process: the run's discovery folder and $HOME (model cards are
        cached there), and `host` for every socket."""
        assert self.workdir is not None
        host = self.settings.host
        env = {**os.environ, "HOME": str(self.workdir), "DYN_FILE_KV": str(self.workdir / "discovery")}
        env.update({key: host for key in ("DYN_TCP_RPC_HOST", "DYN_TCP_RESPONSE_STREAM_HOST", "DYN_SYSTEM_HOST")})
        env.update({"DYN_EVENT_PLANE_HOST": host, "DYN_DISCOVERY_BACKEND": "file", "DYN_REQUEST_PLANE": "tcp"})
        env.setdefault("DYN_LOG", self.settings.log_level)
        return env

    def frontend_command(self) -> list[str]:
        s = self.settings
        return [
            sys.executable, "-m", "dynamo.frontend", "--discovery-backend", "file", "--request-plane", "tcp",
            "--event-plane", "zmq", "--http-host", s.host, "--http-port", str(s.http_port),
            "--namespace", NAMESPACE, "--migration-limit", str(s.migration_limit), *ROUTER_FLAGS[s.router],
        ]  # fmt: skip

    def worker_command(self, status_port: int) -> list[str]:
        return [
            sys.executable, "-m", "nld.serving.dynamo_worker", "--name", self.settings.name,
            "--namespace", NAMESPACE, "--status-port", str(status_port), *self.settings.worker_options,
        ]  # fmt: skip

    def start(self, timeout: float = 300.0) -> OpenAIServer:
        """Start everything and wait until it serves; on failure or Ctrl-C stop what was started."""
        remove_stale(WORKDIR_PREFIX)
        self.workdir = owned_tempdir(WORKDIR_PREFIX)
        try:
            self._janitor = FolderJanitor(self.workdir)
            if not port_free(self.settings.host, self.settings.http_port):
                raise NLDError(f"--http-port {self.settings.http_port}: already in use on {self.settings.host}")
            env = self.environment()
            output = {"stdin": subprocess.DEVNULL, "stdout": sys.stderr.fileno(), "stderr": sys.stderr.fileno()}
            for index in range(self.settings.workers):
                port = free_status_port(self.settings.host)
                process = BoundProcess(self.worker_command(port), env=env, **output)
                add_owner(self.workdir, process.pid)
                self.workers.append(Worker(index, self.settings.host, port, process))
            self.frontend = BoundProcess(self.frontend_command(), env=env, **output)
            add_owner(self.workdir, self.frontend.pid)
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def registered_workers(self) -> int:
        """Workers the frontend knows of (instances of the default endpoint in its /health)."""
        health = _get_json(f"http://{self.settings.host}:{self.settings.http_port}/health") or {}
        instances = health.get("instances") or []
        return len({i.get("instance_id") for i in instances if i.get("endpoint") == DEFAULT_ENDPOINT})

    def listed_models(self) -> set[str]:
        models = _get_json(f"{self.settings.url}/models") or {}
        return {model.get("id") for model in models.get("data") or []}

    def _wait_ready(self, timeout: float) -> None:
        wanted = set(served_names(self.settings.name))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = self.exited()
            if dead:
                raise NLDError(f"{', '.join(dead)} exited while starting (its log is above)")
            if wanted <= self.listed_models() and self.registered_workers() >= self.settings.workers:
                return
            time.sleep(0.5)
        raise NLDError(
            f"the frontend did not list {self.settings.name} on {self.settings.workers} worker(s) in {timeout:.0f} s"
        )

    def exited(self) -> list[str]:
        """The processes that have exited, as 'frontend (code C)' / 'worker I (code C)'."""
        named = [(f"worker {w.index}", w.process) for w in self.workers]
        if self.frontend is not None:
            named.append(("frontend", self.frontend))
        return [
            f"{name} (code {bound.process.returncode})" for name, bound in named if bound.process.poll() is not None
        ]

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the frontend, then the workers (SIGKILL after `timeout` s); remove the run's folder."""
        if self.frontend is not None:
            self.frontend.stop(timeout)
            self.frontend = None
        for worker in self.workers:
            worker.process.stop(timeout)
        self.workers = []
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if self._janitor is not None:
            self._janitor.release()
            self._janitor = None

    def __enter__(self) -> OpenAIServer:
        return self if self.frontend is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


STATUS_PORTS = range(20000, 32768)  # Dynamo reads DYN_SYSTEM_PORT as an i16


def free_status_port(host: str) -> int:
    """A port free on `host` now that Dynamo takes for a status server (below 32768)."""
    for port in random.sample(STATUS_PORTS, 200):
        if port_free(host, port):
            return port
    raise NLDError(
        f"no free port in {STATUS_PORTS.start}-{STATUS_PORTS.stop - 1} on {host} for a worker's status server"
    )
