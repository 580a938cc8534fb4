"""A real `nld serve-openai`, stopped or killed: the frontend, the workers, their guards and the run's
folder do not outlive it, however it ends; a taken port is refused before anything starts."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from nld.owners import start_time
from tests.nld.serving.openai_run import HOST, OpenAIRun, process_tree

pytestmark = [
    pytest.mark.server,
    pytest.mark.skipif(importlib.util.find_spec("dynamo") is None, reason="NVIDIA Dynamo (ai-dynamo) not installed"),
]

BOUND_S = 40.0  # how long a killed run's processes and folder may take to go (guards: 10 s grace)


@pytest.fixture
def runs() -> Iterator[list[OpenAIRun]]:
    started: list[OpenAIRun] = []
    yield started
    for run in started:
        run.kill_all()


def wait_gone(pids: list[int], folder: os.PathLike) -> float:
    """Seconds until every pid is gone (or a zombie) and the folder is removed."""
    began = time.monotonic()
    while any(start_time(pid) is not None for pid in pids) or os.path.exists(folder):
        left = [pid for pid in pids if start_time(pid) is not None]
        assert time.monotonic() - began < BOUND_S, (
            f"left after {BOUND_S} s: pids {left}, folder {os.path.exists(folder)}"
        )
        time.sleep(0.1)
    return time.monotonic() - began


@pytest.mark.parametrize("how", ["Ctrl-C", "SIGTERM", "SIGKILL"])
def test_nothing_outlives_serve_openai(runs: list[OpenAIRun], how: str) -> None:
    run = OpenAIRun("--workers", "2" if how == "SIGKILL" else "1")
    runs.append(run)
    run.wait_ready()
    tree, folder = process_tree(run.process.pid), run.workdir()
    assert len(run.workers()) == (2 if how == "SIGKILL" else 1) and len(tree) >= 5  # + frontend, guards, janitor
    if how == "Ctrl-C":  # what a terminal sends its foreground job; twice, as impatient users do
        os.killpg(run.process.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(run.process.pid, signal.SIGINT)
    else:
        run.process.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGKILL)
    code = run.process.wait(timeout=60)
    seconds = wait_gone(tree, folder)
    print(f"{how}: exit {code}; {len(tree)} processes and {folder.name} gone {seconds:.2f} s after it")
    if how == "SIGKILL":
        assert code == -signal.SIGKILL
    else:
        assert code == 0 and "serve-openai stopped" in run.stderr() and "Traceback" not in run.stderr(), run.stderr()[
            -3000:
        ]
        assert seconds < 1.0  # gone before the command exits


def test_a_taken_http_port_is_refused_before_anything_starts(runs: list[OpenAIRun]) -> None:
    with socket.socket() as holder:
        holder.bind((HOST, 0))
        holder.listen()
        run = OpenAIRun("--http-port", str(holder.getsockname()[1]))  # the last --http-port wins
        runs.append(run)
        code = run.process.wait(timeout=60)
    assert code != 0 and "already in use" in run.stderr(), run.stderr()
