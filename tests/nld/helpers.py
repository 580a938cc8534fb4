"""Helpers for the runtime tests: load fixture cases onto the torch backend, run raw steps."""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path

import torch

from nld.backends import BACKENDS, TorchBackend
from nld.checkpoint import load_checkpoint
from nld.kv_cache import KVCache
from nld.models.released import RELEASED_CONFIGS
from nld.sampling import Sampler
from nld.serving.client import read_metrics
from nld.step import StepRequest
from tests.conftest import fixture_dir

RELEASED_8B = RELEASED_CONFIGS["8b"]  # the shape that plans and conversions are checked on


@cache
def backend_for(
    case: str, device: str = "cpu", dtype: str = "float32", adapter: bool = True, kind: str = "torch"
) -> TorchBackend:
    """A fixture case on a step backend (`kind`: torch, torch-compiled or onnxruntime), cached per arguments."""
    checkpoint = load_checkpoint(fixture_dir(case), with_adapter=adapter)
    if kind == "torch-compiled":
        return TorchBackend.from_checkpoint(checkpoint, dtype, device, compile=True)
    return BACKENDS[kind].from_checkpoint(checkpoint, dtype, device)


def expected_outputs(case: str) -> dict:
    return json.loads((fixture_dir(case) / "expected" / "outputs.json").read_text())


def expected_path(case: str, name: str) -> Path:
    return fixture_dir(case) / "expected" / name


def raw_step(
    backend: TorchBackend,
    cache: KVCache,
    tokens: list[int] | torch.Tensor,
    visibility: torch.Tensor,
    *,
    write: bool = False,
    adapter: bool = False,
) -> torch.Tensor:
    """Run one step after the cache and return its float32 logits [T, V] on the CPU."""
    ids = torch.as_tensor(tokens, dtype=torch.long)
    request = StepRequest(
        cache=cache,
        token_ids=ids,
        positions=torch.arange(cache.length, cache.length + len(ids)),
        visibility=visibility,
        sampler=Sampler(),
        write_cache=write,
        adapter=adapter,
        return_logits=True,
    )
    logits = backend.step([request])[0].logits
    assert logits is not None
    return logits.cpu()


def wait_for_idle_pool(metrics_url: str, total_blocks: int | None = None, timeout: float = 10.0) -> dict[str, float]:
    """A server's nld metrics once its KV pool is all free again (no block in use and, when given,
    `total_blocks` free), or as they are after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = read_metrics(metrics_url)
        idle = metrics.get("nld_kv_blocks_in_use") == 0
        if total_blocks is not None:
            idle = idle and metrics.get("nld_kv_blocks_free") == total_blocks
        if idle or time.monotonic() > deadline:
            return metrics
        time.sleep(0.1)
