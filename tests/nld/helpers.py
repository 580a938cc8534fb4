"""Helpers for the runtime tests: load fixture cases onto the torch backend, run raw steps."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch

from nld.backends import TorchBackend
from nld.checkpoint import load_checkpoint
from nld.kv_cache import KVCache
from nld.sampling import Sampler
from nld.step import StepRequest
from tests.conftest import fixture_dir

# config.json of the released NLD-8B (the shape that plans and conversions are checked on).
RELEASED_8B = {
    "model_type": "nemotron_labs_diffusion",
    "hidden_size": 4096,
    "num_hidden_layers": 34,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 131072,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 262144,
    "tie_word_embeddings": False,
    "mask_token_id": 100,
    "block_size": 32,
    "dlm_paradigm": "bidirectional",
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 1e9,
        "factor": 16,
        "original_max_position_embeddings": 16384,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1,
        "mscale_all_dim": 1,
        "llama_4_scaling_beta": 0.1,
    },
}


@cache
def backend_for(case: str, device: str = "cpu", dtype: str = "float32", adapter: bool = True) -> TorchBackend:
    return TorchBackend.from_checkpoint(load_checkpoint(fixture_dir(case), with_adapter=adapter), dtype, device)


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
