"""The tensorrt backend: profile selection (here), clear refusals without a GPU (here), and fixture parity
on a GPU (tests/nld/test_fixture_*.py run it through BACKEND_DEVICES where CUDA and TensorRT exist)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nld.backends.tensorrt_backend import ProfileRange, TensorRTBackend, pick_profile
from nld.builder.plan import step_tokens
from nld.builder.profiles import engine_profiles
from nld.checkpoint import load_checkpoint
from nld.config import load_config
from nld.errors import NLDError
from nld.generate import load_backend
from tests.conftest import fixture_dir


def ranges_as_engine_reports_them(context: int = 256, max_batch: int = 4) -> list[ProfileRange]:
    config = load_config(fixture_dir("tiny_b8"))
    found = engine_profiles(config, step_tokens(config), context, max_batch, ("ar", "linear-spec"), 64)
    boxes = []
    for profile in found:
        ids, past = profile.shapes["input_ids"], profile.shapes["past_key_values.0.key"]
        boxes.append(ProfileRange((ids.min[0], ids.max[0]), (ids.min[1], ids.max[1]), (past.min[2], past.max[2])))
    return boxes


def test_decode_steps_pick_the_decode_profile_and_prompts_the_prefill_one() -> None:
    boxes = ranges_as_engine_reports_them()
    assert pick_profile(boxes, 4, 1, 200) == 0  # AR step of a full batch late in the context
    assert pick_profile(boxes, 1, 8, 0) == 0  # a linear-spec block
    assert pick_profile(boxes, 1, 50, 0) == 1  # a 50-token prompt
    with pytest.raises(NLDError, match="no engine profile holds batch 1, 65 tokens per step"):
        pick_profile(boxes, 1, 65, 0)  # longer than --max-prefill
    with pytest.raises(NLDError, match="batch 5"):
        pick_profile(boxes, 5, 1, 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_without_a_gpu_the_backend_refuses_clearly() -> None:
    checkpoint = load_checkpoint(fixture_dir("tiny_b8"))
    with pytest.raises(NLDError, match="runs engines on a CUDA GPU; device 'cuda' is not one here"):
        TensorRTBackend.from_checkpoint(checkpoint)


def test_build_folders_are_checked(tmp_path: Path) -> None:
    model = str(fixture_dir("tiny_b8"))
    with pytest.raises(ValueError, match="--build applies to the onnxruntime and tensorrt backends, not 'torch'"):
        load_backend(model, "torch", build_dir=tmp_path)
    with pytest.raises(NLDError, match=f"{tmp_path}/engine not found"):
        load_backend(model, "tensorrt", "float16", "cuda", build_dir=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a host without CUDA")
def test_gpu_check_script_says_why_it_cannot_run_here() -> None:
    script = Path(__file__).resolve().parents[3] / "scripts" / "gpu_check_tensorrt.py"
    env = {**os.environ, "PYTHONPATH": str(script.parents[1])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "cannot run here, torch sees no CUDA device" in done.stderr
