"""Models to benchmark without a checkpoint, and what the machine can do for a model's forwards.

`random_checkpoint` writes an NLD checkpoint of a named shape (the issue-24 133M-parameter NLD) with
random weights; `machine_ceilings` measures the fp32 weight streaming and GEMM throughput that bound a
model's AR and block forwards on this machine.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from nld.models import default_model_dir

# Random-weight shapes (no checkpoint needed): the 133M-parameter NLD.
SHAPES = {
    "133m": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "head_dim": 64,
        "intermediate_size": 2304,
        "vocab_size": 32768,
        "block_size": 32,
    }
}


def random_checkpoint(folder: Path, shape: str) -> Path:
    """An NLD checkpoint of `shape` with random weights (std 0.02), written like a released one."""
    from safetensors.torch import save_file

    from nld.config import parse_config
    from nld.model import NLDTransformer

    base = json.loads((default_model_dir() / "config.json").read_text())
    config_json = {**base, **SHAPES[shape], "max_position_embeddings": 4096, "dtype": "float32"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_json, indent=2))
    (folder / "generation_config.json").write_text((default_model_dir() / "generation_config.json").read_text())
    generator = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        model = NLDTransformer(parse_config(config_json))
    weights = {}
    for name, parameter in model.state_dict().items():
        is_norm = name.endswith("norm.weight")
        tensor = torch.ones(parameter.shape) if is_norm else torch.randn(parameter.shape, generator=generator) * 0.02
        weights[name] = tensor.contiguous()
    save_file(weights, str(folder / "model.safetensors"))
    return folder


def machine_ceilings(model: str, repeat: int = 5) -> dict:
    """What this machine can do for the model's forwards, measured: fp32 weight streaming of a GEMV over
    the model's own weight shapes (the AR bound: weights read once per token) and fp32 GEMM throughput
    (the bound of wide block forwards), with the model's weight bytes and FLOPs per token."""
    from nld.checkpoint import load_checkpoint

    weights = [
        t.float()
        for name, t in load_checkpoint(model, with_adapter=False).weights.items()
        if t.dim() == 2 and "embed" not in name
    ]
    streamed = sum(t.numel() * 4 for t in weights)
    vectors = {t.shape[1]: torch.randn(1, t.shape[1]) for t in weights}
    seconds = []
    for _ in range(repeat):
        began = time.perf_counter()
        for weight in weights:
            torch.nn.functional.linear(vectors[weight.shape[1]], weight)
        seconds.append(time.perf_counter() - began)
    gemv = streamed / statistics.median(seconds) / 1e9
    size = 2048
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    began = time.perf_counter()
    for _ in range(repeat):
        a @ b
    gemm = 2 * size**3 * repeat / (time.perf_counter() - began) / 1e9
    return {
        "weight_bytes_per_token": streamed,
        "gemv_weight_stream_gb_s": round(gemv, 1),
        "gemm_fp32_gflop_s": round(gemm, 1),
        "ar_ceiling_tok_s": round(gemv * 1e9 / streamed, 1),
        "block_ceiling_tokens_per_s": round(gemm * 1e9 / (2 * streamed / 4), 1),
    }
