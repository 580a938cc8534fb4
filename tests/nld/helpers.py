"""Helpers for the runtime tests: load fixture cases onto the torch backend, run raw steps."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

from nld.backends import BACKENDS, TorchBackend
from nld.checkpoint import load_checkpoint
from nld.kv_cache import KVCache
from nld.models.released import RELEASED_CONFIGS
from nld.sampling import Sampler
from nld.step import StepRequest
from tests.conftest import fixture_dir

RELEASED_8B = RELEASED_CONFIGS["8b"]  # the shape that plans and conversions are checked on


@cache
def backend_for(
    case: str, device: str = "cpu", dtype: str = "float32", adapter: bool = True, kind: str = "torch"
) -> TorchBackend:
    """A fixture case on a step backend (`kind`: torch or onnxruntime), cached per arguments."""
    checkpoint = load_checkpoint(fixture_dir(case), with_adapter=adapter)
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
