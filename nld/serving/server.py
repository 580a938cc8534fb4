"""Start the real `tritonserver` on a model repository, wait until the model is ready, stop it cleanly.

The binary comes from the nvidia-pytriton wheel (or `--tritonserver` / $NLD_TRITONSERVER). Its Python
backend needs a stub built for this interpreter's Python version, the interpreter's libpython on
LD_LIBRARY_PATH, and this environment's bin first on PATH so the stub imports our packages.

Nothing outlives the wrapper: tritonserver runs as a BoundProcess (it gets SIGTERM from the kernel when
the wrapper dies, even by SIGKILL, and a guard then kills its stubs), and a dead run's scratch folder
and shared memory go at the next start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from nld.errors import NLDError
from nld.owners import add_owner, owned_tempdir, remove_stale
from nld.serving.lifetime import BoundProcess
from nld.serving.repository import MODEL_NAME

WORKDIR_PREFIX = "nld-serve-"  # the scratch folder in the temp dir; also names its shared memory
SHM_DIR = Path("/dev/shm")


@dataclass(frozen=True)
class ServerSettings:
    repository: Path
    host: str = "127.0.0.1"
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    tritonserver: str | None = None
    log_verbose: int = 0

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on host:port now (bound as servers bind: SO_REUSEADDR, so a
    connection in TIME_WAIT does not count as a holder)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free on `host` now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _pytriton_dist() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    return Path(pytriton.__file__).parent / "tritonserver"


def find_tritonserver(explicit: str | None = None) -> Path:
    """The tritonserver binary: explicit path, $NLD_TRITONSERVER, or the one inside nvidia-pytriton."""
    candidates = [explicit, os.environ.get("NLD_TRITONSERVER")]
    dist = _pytriton_dist()
    if dist is not None:
        candidates.append(str(dist / "bin" / "tritonserver"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise NLDError(
        "no tritonserver found: install nvidia-pytriton (x86_64), or pass --tritonserver / set NLD_TRITONSERVER"
    )


def prepare_backends(binary: Path, workdir: Path) -> Path:
    """A backend directory whose Python backend has the stub for this interpreter."""
    dist = binary.parent.parent
    stubs = dist / "python_backend_stubs"
    if not stubs.is_dir():  # a regular Triton install carries its own backends
        return dist / "backends"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = stubs / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise NLDError(f"{stubs}: no Python-backend stub for Python {version}")
    python_backend = workdir / "backends" / "python"
    python_backend.mkdir(parents=True)
    for item in (dist / "backends" / "python").iterdir():
        if item.is_file():
            (python_backend / item.name).symlink_to(item)
    shutil.copy2(stub, python_backend / "triton_python_backend_stub")
    return workdir / "backends"


def server_environment() -> dict[str, str]:
    """libpython and the wheel's bundled libraries (the copied stub loses its relative RPATH) on the
    library path; this interpreter's bin first on PATH."""
    env = dict(os.environ)
    libdirs = [sysconfig.get_config_var("LIBDIR") or ""]
    dist = _pytriton_dist()
    if dist is not None:
        libdirs.append(str(dist.parent.parent / "nvidia_pytriton.libs"))
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (*libdirs, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    return env


def remove_run_files(workdir: Path) -> None:
    """A stopped run's scratch folder and the Python-backend shared memory named after it."""
    shutil.rmtree(workdir, ignore_errors=True)
    for region in SHM_DIR.glob(f"{workdir.name}_*"):
        region.unlink(missing_ok=True)


def remove_stale_runs() -> list[Path]:
    """Delete the scratch folders and shared memory of runs whose wrapper and tritonserver are both
    gone (a SIGKILL leaves them); returns the folders. Live runs are left alone."""
    removed = remove_stale(WORKDIR_PREFIX)
    for folder in removed:
        remove_run_files(folder)
    return removed


class TritonServer:
    """A running tritonserver process; use as a context manager or call start()/stop()."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.process: subprocess.Popen[bytes] | None = None
        self._bound: BoundProcess | None = None
        self._workdir: Path | None = None
        self.log_path: Path | None = None

    def command(self, backends: Path, shm_prefix: str = "triton_python_backend_shm_region_") -> list[str]:
        s = self.settings
        return [
            str(find_tritonserver(s.tritonserver)),
            f"--model-repository={Path(s.repository).resolve()}",
            f"--backend-directory={backends}",
            f"--grpc-address={s.host}",
            f"--grpc-port={s.grpc_port}",
            f"--http-address={s.host}",
            f"--http-port={s.http_port}",
            f"--metrics-address={s.host}",
            f"--metrics-port={s.metrics_port}",
            "--allow-gpu-metrics=false",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--log-verbose={s.log_verbose}",
        ]

    def start(self, timeout: float = 300.0) -> TritonServer:
        """Launch and wait until the nld model reports ready (raises with the server log if it fails)."""
        repository = Path(self.settings.repository)
        if not (repository / MODEL_NAME / "config.pbtxt").is_file():
            raise NLDError(
                f"{repository}: not a model repository (no {MODEL_NAME}/config.pbtxt); write one with nld repo"
            )
        binary = find_tritonserver(self.settings.tritonserver)
        s = self.settings
        for flag, port in (
            ("--grpc-port", s.grpc_port),
            ("--http-port", s.http_port),
            ("--metrics-port", s.metrics_port),
        ):
            if not port_free(s.host, port):  # else tritonserver would fail only after the model loaded
                raise NLDError(f"{flag} {port}: already in use on {s.host}")
        remove_stale_runs()
        self._workdir = workdir = owned_tempdir(WORKDIR_PREFIX)
        try:
            backends = prepare_backends(binary, workdir)
            self.log_path = workdir / "tritonserver.log"
            with open(self.log_path, "wb") as log:
                self._bound = BoundProcess(
                    self.command(backends, f"{workdir.name}_"),
                    stdin=subprocess.DEVNULL,  # its own process group: a terminal read would stop it
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=server_environment(),
                )
            self.process = self._bound.process
            add_owner(workdir, self.process.pid)  # the folder stays while tritonserver may use it
            self._wait_ready(timeout)
        except BaseException:  # a failed start, or Ctrl-C while the model loads
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(self.settings.grpc_url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                tail = self.log_tail()
                code = self.process.returncode
                self.stop()
                raise NLDError(f"tritonserver exited with code {code}:\n{tail}")
            try:
                if client.is_model_ready(MODEL_NAME):
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise NLDError(f"tritonserver did not get the model ready within {timeout:.0f} s:\n{tail}")

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Triton's graceful shutdown; SIGINT may be ignored in background jobs), then SIGKILL;
        then whatever it left (stubs), its scratch folder."""
        if self._bound is not None:
            self._bound.stop(timeout)
            self._bound = None
        self.process = None
        if self._workdir is not None:
            remove_run_files(self._workdir)
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
