"""Fixtures shared by the packages' tests: the built-in model quantized once per session, and one real
tritonserver serving it (started on first use, for the `server` tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from nld.checkpoint import load_checkpoint
from nld.model import NLDTransformer
from nld.models import default_model_dir
from nld.quantize.calibration import calibration_windows, read_texts
from nld.quantize.export_hf import export_quantized_hf
from nld.quantize.ptq import quantize_model
from nld.quantize.recipes import RECIPES
from nld.serving.repository import RepositorySettings, write_repository
from nld.serving.server import ServerSettings, TritonServer, free_port
from nld.tokenizer import NLDTokenizer

SERVER_KV_BLOCKS = 2048


@pytest.fixture(scope="session")
def quantized_builtin(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """`quantized_builtin(precision, kv_cache=None)`: the built-in model quantized with a small
    calibration set (4 windows of 64 tokens) and exported as a unified HF checkpoint, made once."""
    made: dict[tuple[str, str | None], Path] = {}

    def make(precision: str, kv_cache: str | None = None) -> Path:
        if (precision, kv_cache) not in made:
            source = default_model_dir()
            windows = calibration_windows(NLDTokenizer.from_dir(source), read_texts(None)[:20], 4, 64)
            model = NLDTransformer.from_checkpoint(load_checkpoint(source, with_adapter=False), torch.float32)
            model = quantize_model(model, RECIPES[precision], windows, kv_cache, progress=False)
            out = tmp_path_factory.mktemp(f"quantized-{precision}") / "checkpoint"
            made[precision, kv_cache] = export_quantized_hf(model, RECIPES[precision], source, out, kv_cache)
        return made[precision, kv_cache]

    return make


@pytest.fixture(scope="session")
def tiny_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerSettings]:
    """The built-in model behind the real tritonserver on free loopback ports (16 requests at once)."""
    repo = write_repository(
        tmp_path_factory.mktemp("serve") / "repo",
        RepositorySettings(str(default_model_dir()), max_batch=16, kv_blocks=SERVER_KV_BLOCKS),
    )
    settings = ServerSettings(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(settings):
        yield settings
