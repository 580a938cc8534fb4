"""Shared test helpers: where the golden fixtures live, devices to run on, and marker handling."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("NLD_FIXTURES", REPO.parent / "shared" / "fixtures"))
FIXTURE_CASES = ["tiny_b8", "tiny_b8_eos", "tiny_b8_spec_lora"]

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
# (backend, device) pairs that must reproduce the golden fixtures.
BACKEND_DEVICES = [
    ("torch", "cpu"),
    pytest.param("torch", "cuda", marks=pytest.mark.gpu),
    ("onnxruntime", "cpu"),
    # the torch backend's compiled static-shape steps (compiling takes minutes here: slow)
    pytest.param("torch-compiled", "cpu", marks=pytest.mark.slow),
    pytest.param("torch-compiled", "cuda", marks=pytest.mark.gpu),
    pytest.param(
        "tensorrt",
        "cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(
                not any(importlib.util.find_spec(module) for module in ("tensorrt", "tensorrt_rtx")),
                reason="the tensorrt backend needs the tensorrt or tensorrt_rtx module",
            ),
        ],
    ),
]


def fixture_dir(case: str) -> Path:
    """Folder of a golden case; fails in CI and skips elsewhere when the fixtures are absent."""
    path = FIXTURES / case
    if not path.is_dir():
        message = f"golden fixtures not found at {path} (set NLD_FIXTURES)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device; this machine has none")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
