"""SIGINT / SIGTERM stop nld-build in every stage: one line, exit 130 / 143, no OUT, no staging folder.

Real `nld-build` processes and real signals; the engine stage is stopped inside TensorRT-RTX's native
build (through its progress monitor)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nld.builder import interrupts
from nld.builder.interrupts import Interrupted

NLD_BUILD = [sys.executable, "-c", "import sys; from nld.builder.cli import main; sys.exit(main())"]


def _interrupt(tmp_path: Path, when: str, delay: float, number: signal.Signals) -> tuple[int, str, float]:
    """Start a real rtx-pro-6000 fp16 build of the built-in model, send `number` `delay` s after the log
    line containing `when`; (exit code, stderr from the signal on, seconds from the signal to the exit)."""
    out = tmp_path / "out"
    argv = ["--target", "rtx-pro-6000", "--precision", "fp16", "--output", str(out)]
    build = subprocess.Popen([*NLD_BUILD, *argv], stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    assert build.stderr is not None
    try:
        before = []
        for line in build.stderr:
            before.append(line)
            if when in line:
                break
        else:
            pytest.fail(f"the build ended before {when!r}: {''.join(before)[-2000:]}")
        time.sleep(delay)
        sent = time.monotonic()
        build.send_signal(number)
        rest = build.stderr.read()
        code = build.wait(timeout=60)
        return code, rest, time.monotonic() - sent
    finally:
        build.kill()
        build.wait()


def _check_stopped(tmp_path: Path, result: tuple[int, str, float], number: signal.Signals) -> None:
    code, stderr, seconds = result
    message = f"nld-build: interrupted ({number.name}); nothing written to {tmp_path / 'out'}"
    assert code == 128 + number, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("nld-build:")] == [message] and lines[-1] == message, stderr
    assert seconds < 10, f"{seconds:.1f} s from the signal to the exit"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither OUT nor a staging folder


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_inside_the_tensorrt_rtx_build_stops_it(tmp_path: Path, number: signal.Signals) -> None:
    _check_stopped(tmp_path, _interrupt(tmp_path, "building the step engine", 1.5, number), number)


@pytest.mark.parametrize(
    ("when", "delay"),
    [("exporting the TRT-LLM checkpoint", 0.0), ("exporting the step network to ONNX", 2.0)],
    ids=["trtllm-export", "onnx-export"],
)
def test_sigint_in_an_earlier_stage_stops_the_build(tmp_path: Path, when: str, delay: float) -> None:
    _check_stopped(tmp_path, _interrupt(tmp_path, when, delay, signal.SIGINT), signal.SIGINT)


def test_signals_raise_outside_native_code_wait_inside_and_are_ignored_once_finishing() -> None:
    previous = signal.getsignal(signal.SIGINT)
    with interrupts.stop_on_signals():
        with pytest.raises(Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs before this returns
        assert stopped.value.exit_code == 143 and interrupts.requested() == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a second signal while stopping is ignored
    assert interrupts.requested() is None and signal.getsignal(signal.SIGINT) is previous
    with interrupts.stop_on_signals(), pytest.raises(Interrupted), interrupts.held():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert interrupts.requested() == signal.SIGINT  # recorded, not raised, until leaving
    with interrupts.stop_on_signals():
        interrupts.finishing()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert interrupts.requested() == signal.SIGINT  # recorded, the work goes on
