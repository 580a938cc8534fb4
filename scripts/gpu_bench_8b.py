#!/usr/bin/env python
"""GPU run recipe of nld bench (issue 9): the torch backend's step costs on an 8B-shaped NLD model with
random bf16 weights (the released 8B config; no checkpoint needed), in one go (~2-5 minutes on an
H100/H200 including weight init):

    python scripts/gpu_bench_8b.py [--context 1024] [--json out.json]

Prints a table: per step shape (1 token = AR; B = 32 tokens = a diffusion / linear-spec block; B(B+1) =
16 x 17 = 272 tokens = a quadratic-spec cycle), at 1 and 8 sequences, the median step time, its cost
relative to the 1-token step, and for the 1-token step the achieved weight-streaming bandwidth against
the device's peak (CuPy) and the bandwidth roofline's step time. Exit 2 without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nld.config import NLDConfig, parse_config
from nld.model import NLDTransformer
from nld.models.released import RELEASED_CONFIGS

SHAPES = {"ar (1)": 1, "block (B=32)": 32, "quadratic (16 x 17)": 16 * 17}


def peak_bandwidth() -> float | None:
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(torch.cuda.current_device())
        return 2 * props["memoryClockRate"] * 1e3 * props["memoryBusWidth"] / 8 / 1e9
    except Exception:  # CuPy missing, or no such fields
        return None


def random_model(config: NLDConfig) -> NLDTransformer:
    """The 8B network on the GPU with PyTorch's default random init, cast to bf16 (peak ~48 GB)."""
    with torch.device("cuda"):
        model = NLDTransformer(config)
    return model.to(torch.bfloat16).eval()


def step_seconds(model: NLDTransformer, batch: int, tokens: int, context: int, repeats: int = 10) -> float:
    config = model.config
    past = [
        (
            torch.randn(
                batch, config.num_key_value_heads, context, config.head_dim, device="cuda", dtype=torch.bfloat16
            ),
            torch.randn(
                batch, config.num_key_value_heads, context, config.head_dim, device="cuda", dtype=torch.bfloat16
            ),
        )
        for _ in range(config.num_hidden_layers)
    ]
    ids = torch.randint(0, config.vocab_size, (batch, tokens), device="cuda")
    positions = torch.arange(context, context + tokens, device="cuda").expand(batch, -1)
    bias = torch.zeros(batch, 1, tokens, context + tokens, device="cuda", dtype=torch.bfloat16)
    times = []
    with torch.no_grad():
        for index in range(repeats + 2):
            torch.cuda.synchronize()
            began = time.perf_counter()
            hidden, _ = model(ids, positions, bias, past)
            model.logits(hidden[:, -1:])
            torch.cuda.synchronize()
            if index >= 2:  # warm-up
                times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, default=1024, help="cached tokens per sequence")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_bench_8b: no CUDA GPU visible to torch", file=sys.stderr)
        return 2
    began = time.perf_counter()
    config = parse_config(RELEASED_CONFIGS["8b"], None, source="released 8B config")
    model = random_model(config)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = peak_bandwidth()
    device = torch.cuda.get_device_name()
    print(f"{device}: 8B-shaped NLD, {weight_bytes / 1e9:.1f} GB of bf16 weights, context {args.context}")
    rows = []
    for batch in (1, 8):
        base = None
        for label, tokens in SHAPES.items():
            seconds = step_seconds(model, batch, tokens, args.context)
            base = base or seconds
            row = {
                "batch": batch,
                "shape": label,
                "tokens": tokens,
                "ms": round(seconds * 1e3, 3),
                "relative_to_1_token": round(seconds / base, 2),
            }
            if tokens == 1:
                row["weight_bandwidth_gbs"] = round(weight_bytes / seconds / 1e9, 1)
                if peak:
                    row["roofline_ms"] = round(weight_bytes / (peak * 1e9) * 1e3, 3)
                    row["share_of_peak"] = round(weight_bytes / seconds / 1e9 / peak, 3)
            rows.append(row)
    print("| sequences | step | tokens | ms | x 1-token step | weight GB/s | roofline ms | share of peak |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        bandwidth = f"{row.get('weight_bandwidth_gbs', '-')} | {row.get('roofline_ms', '-')}"
        print(
            f"| {row['batch']} | {row['shape']} | {row['tokens']} | {row['ms']} | {row['relative_to_1_token']} | "
            f"{bandwidth} | {row.get('share_of_peak', '-')} |"
        )
    print(f"peak bandwidth {peak:.0f} GB/s" if peak else "peak bandwidth unknown (no CuPy)")
    print(f"done in {time.perf_counter() - began:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "peak_gbs": peak, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
