"""Staging folders of killed processes are removed by the next run; those of live owners are kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from nld.models import default_model_dir
from nld.owners import OWNER_FILE, process_identity
from nld.staging import remove_dead_staging, staged_directory

NLD_BUILD = [sys.executable, "-c", "import sys; from nld.builder.cli import main; sys.exit(main())"]


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout: float = 120) -> list[str]:
    """Lines of the process's stderr up to the first that contains `needle`."""
    assert process.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"no line with {needle!r} within {timeout} s: {''.join(seen)[-2000:]}")


def _staging_folders(output: Path) -> list[Path]:
    return sorted(p for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def test_a_killed_build_leaves_its_staging_folder_and_the_next_run_removes_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--model", str(default_model_dir()), "--target", "rtx-pro-6000", "--precision", "fp16"]
    build = subprocess.Popen([*NLD_BUILD, *argv, "--output", str(out)], stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_line(build, "to ONNX")  # staging folder written: plan, TRT-LLM checkpoint
        build.send_signal(signal.SIGKILL)
    finally:
        build.kill()
        build.wait(timeout=30)
    assert build.returncode == -signal.SIGKILL
    (left,) = _staging_folders(out)
    assert json.loads((left / OWNER_FILE).read_text())["pid"] == build.pid and (left / "plan.json").exists()
    with staged_directory(out) as staging:  # the next run
        (staging / "done").write_text("yes")
    assert not left.exists() and _staging_folders(out) == [] and (out / "done").exists()
    assert not (out / OWNER_FILE).exists()


def test_a_live_owners_staging_folder_is_left_alone_until_it_dies(tmp_path: Path) -> None:
    out = tmp_path / "out"
    holder = "import sys, time; from nld.staging import staged_directory\nwith staged_directory(sys.argv[1]) as s:\n"
    holder += "    print(s, flush=True); time.sleep(120)\n"
    owner = subprocess.Popen([sys.executable, "-c", holder, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        staging = Path(owner.stdout.readline().strip())
        assert staging.is_dir()
        assert remove_dead_staging(out) == []
        with staged_directory(out) as mine:
            (mine / "done").write_text("yes")
        assert staging.is_dir() and (out / "done").exists()
    finally:
        owner.kill()
        owner.wait(timeout=30)
    assert remove_dead_staging(out) == [staging] and not staging.exists()


def test_reused_pids_other_hosts_and_unmarked_folders(tmp_path: Path) -> None:
    out = tmp_path / "out"
    me = process_identity()

    def folder(name: str, owner: dict | None) -> Path:
        path = tmp_path / f".out.{name}"
        path.mkdir()
        if owner is not None:
            (path / OWNER_FILE).write_text(json.dumps(owner))
        return path

    reused = folder("reused", {**me, "start": "1"})  # this pid, but a process started at another time
    alive = folder("alive", me)
    elsewhere = folder("elsewhere", {**me, "pid": 2**22 + 1, "host": f"not-{me['host']}"})
    unmarked = folder("unmarked", None)
    other_output = tmp_path / ".outer.x"
    other_output.mkdir()
    (other_output / OWNER_FILE).write_text(json.dumps({**me, "start": "1"}))
    assert remove_dead_staging(out) == [reused]
    assert all(p.is_dir() for p in (alive, elsewhere, unmarked, other_output)) and os.getpid() == me["pid"]
