#!/usr/bin/env python
"""GPU run recipe of nld bench (issues 9, 24): the torch backend's step costs on an 8B-shaped NLD model with
random bf16 weights (the released 8B config; no checkpoint needed), eager and compiled (CUDA graphs), in
one go:

    python scripts/gpu_bench_8b.py [--context 1024] [--compile-budget 150] [--json out.json]
    python scripts/gpu_bench_8b.py --device cpu --model nld/models/tiny   # a smoke run of the recipe here

Each step goes through the backend as the engine runs it: requests in the slots of one KV store holding
`--context` tokens each, the past read in place. Prints a table: per step shape (1 token = AR; B = 32
tokens = a diffusion / linear-spec draft or verify; B(B+1) = 16 x 17 = 272 tokens = a quadratic-spec
cycle), at 1 and 8 sequences, eager and compiled, the median step time, its cost relative to the 1-token
step, and for the 1-token step the achieved weight-streaming bandwidth against the device's peak (CuPy)
and the bandwidth roofline's step time. Compiled shapes are compiled until `--compile-budget` seconds of
compiling are spent (the rest are reported as skipped). Exit 2 without a CUDA GPU (unless --device cpu).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nld.backends.torch_backend import TorchBackend, compiled_steps
from nld.config import NLDConfig, load_config, parse_config
from nld.model import NLDTransformer
from nld.models.released import RELEASED_CONFIGS
from nld.sampling import Sampler
from nld.step import StepRequest

SHAPES = {"ar (1)": 1, "block (B=32)": 32, "quadratic (16 x 17)": 16 * 17}


def peak_bandwidth() -> float | None:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(torch.cuda.current_device())
        return 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8 / 1e9
    except Exception:  # CuPy missing, or no such fields
        return None


def random_model(config: NLDConfig, device: str) -> NLDTransformer:
    """The network with PyTorch's default random init, fused as the backend runs it (8B: ~16 GB in bf16)."""
    with torch.device(device):
        model = NLDTransformer(config)
    model = model.to(torch.bfloat16 if device == "cuda" else torch.float32).eval()
    model.fuse_projections()
    return model


def step_seconds(backend: TorchBackend, batch: int, tokens: int, context: int, repeats: int = 10) -> float:
    """Median seconds of one batched step of `batch` sequences with `context` cached tokens each."""
    config = backend.config
    store = backend.new_store(batch, context + tokens)
    requests = []
    for slot in range(batch):
        cache = store.cache(slot)
        cache.length = context  # random K/V stand in for a prompt: the step reads them in place
        ids = torch.randint(4, config.vocab_size, (tokens,))
        positions = torch.arange(context, context + tokens)
        visibility = torch.ones(tokens, tokens, dtype=torch.bool).tril()
        requests.append(StepRequest(cache, ids, positions, visibility, Sampler(banned_ids=(config.mask_token_id,))))
    store.keys.normal_()
    store.values.normal_()
    times = []
    for index in range(repeats + 2):
        synchronize()
        began = time.perf_counter()
        backend.step(requests)
        synchronize()
        if index >= 2:  # warm-up (and, compiled, the compile)
            times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=1024, help="cached tokens per sequence")
    parser.add_argument("--compile-budget", type=float, default=150.0, help="seconds of compiling at most")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", help="a checkpoint instead of the random 8B (smoke runs)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_bench_8b: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    began = time.perf_counter()
    config = load_config(args.model) if args.model else parse_config(RELEASED_CONFIGS["8b"], None, source="8B")
    model = random_model(config, args.device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = peak_bandwidth() if args.device == "cuda" else None
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    size = f"{config.num_hidden_layers}-layer NLD, {weight_bytes / 1e9:.3g} GB of weights"
    print(f"{device}: {size}, context {args.context}")
    backends = {"eager": TorchBackend(model), "compiled": TorchBackend(model, compiled_steps(model, SHAPES.values()))}
    rows = []
    for variant, backend in backends.items():
        for batch in (1, 8):
            base = None
            for label, tokens in SHAPES.items():
                compiling = backend.compile_seconds
                if variant == "compiled" and compiling > args.compile_budget:
                    rows.append({"variant": variant, "batch": batch, "shape": label, "tokens": tokens, "ms": None})
                    continue
                seconds = step_seconds(backend, batch, tokens, args.context)
                base = base or seconds
                row = {"variant": variant, "batch": batch, "shape": label, "tokens": tokens}
                row |= {"ms": round(seconds * 1e3, 3), "relative_to_1_token": round(seconds / base, 2)}
                if variant == "compiled":
                    row["compile_s"] = round(backend.compile_seconds - compiling, 1)
                if tokens == 1:
                    row["weight_bandwidth_gbs"] = round(weight_bytes / seconds / 1e9, 1)
                    if peak:
                        row["roofline_ms"] = round(weight_bytes / (peak * 1e9) * 1e3, 3)
                        row["share_of_peak"] = round(weight_bytes / seconds / 1e9 / peak, 3)
                rows.append(row)
    print("| variant | sequences | step | tokens | ms | x 1-token step | weight GB/s | roofline ms | share of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = [row.get(key, "-") for key in ("variant", "batch", "shape", "tokens", "ms", "relative_to_1_token")]
        cells += [row.get(key, "-") for key in ("weight_bandwidth_gbs", "roofline_ms", "share_of_peak")]
        print("| " + " | ".join("skipped (compile budget)" if cell is None else str(cell) for cell in cells) + " |")
    print(f"peak bandwidth {peak:.0f} GB/s" if peak else "peak bandwidth unknown (no CuPy, or not a GPU)")
    print(f"done in {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "peak_gbs": peak, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
