#!/usr/bin/env python3
"""Where a decode step's time goes: one batched step of the torch backend at the widths the modes use
(1: AR, B: a diffusion/linear-spec block, B(B+1): a quadratic cycle) and batch sizes 1/4/16, split
into the network forward and the host work around it, eager and (with --compile) torch.compile'd.

    .venv/bin/python scripts/bench_step.py [--model DIR] [--threads 2] [--past 64] [--repeat 30]
        [--compile] [--layouts] [--out docs/bench/step_cost.json]

Prints one Markdown table and writes the same as JSON. `--layouts` adds a row per weight layout /
dtype of a single linear layer of the model's MLP shape, to show what the GEMMs themselves cost.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from nld.backends.torch_backend import TorchBackend
from nld.checkpoint import load_checkpoint
from nld.models import default_model_dir
from nld.sampling import Sampler
from nld.step import StepRequest, bidirectional

BATCHES = (1, 4, 16)


def widths(block: int) -> dict[str, int]:
    return {"ar (1)": 1, f"block ({block})": block, f"quadratic ({block * (block + 1)})": block * (block + 1)}


def requests_for(backend: TorchBackend, batch: int, width: int, past: int) -> list[StepRequest]:
    """`batch` requests of `width` new tokens after `past` committed ones (random K/V), no cache write."""
    made = []
    for _ in range(batch):
        cache = backend.new_cache(past + width)
        layers = backend.config.num_hidden_layers
        shape = (backend.config.num_key_value_heads, past, backend.config.head_dim)
        cache.append([(torch.randn(shape), torch.randn(shape)) for _ in range(layers)])
        ids = torch.randint(4, backend.config.vocab_size, (width,))
        made.append(StepRequest(cache, ids, torch.arange(past, past + width), bidirectional(width), Sampler()))
    return made


def median_ms(run: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        run()  # type: ignore[operator]
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


def forward_only(backend: TorchBackend, requests: list[StepRequest]) -> object:
    """The network part of `backend.step(requests)`: the forward and the logits of every row."""
    from nld.backends.padded import build_batch

    batch = build_batch(requests, backend._shape(requests), backend.device, backend.dtype)

    def run() -> None:
        hidden, _ = backend._forward(batch, False)
        backend._to_logits(hidden)

    return run


def layout_rows(hidden: int, inner: int, repeat: int) -> list[dict]:
    """One linear layer of the MLP's shape [hidden -> inner], per weight layout and dtype, rows 1 and 8."""
    weights = {"row-major fp32 (nn.Linear)": torch.randn(inner, hidden)}
    weights["column-major fp32"] = weights["row-major fp32 (nn.Linear)"].t().contiguous().t()
    weights["row-major bf16"] = weights["row-major fp32 (nn.Linear)"].bfloat16()
    rows = []
    for name, weight in weights.items():
        pool = [weight.clone() if weight.is_contiguous() else weight.t().clone().t() for _ in range(32)]  # > L2
        for count in (1, 8):
            x = torch.randn(1, count, hidden, dtype=weight.dtype)

            def run(x: torch.Tensor = x, pool: list = pool) -> None:
                for item in pool:
                    torch.nn.functional.linear(x, item)

            seconds = median_ms(run, repeat) / 1000 / len(pool)
            gigabytes = weight.numel() * weight.element_size() / 1e9
            speed = round(gigabytes / seconds, 1)
            rows.append({"layout": name, "rows": count, "us": round(1e6 * seconds, 1), "GB/s": speed})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(default_model_dir()))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--past", type=int, default=64, help="committed tokens before each step")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd forwards (slow to compile)")
    parser.add_argument("--layouts", action="store_true", help="also time one linear layer per weight layout")
    parser.add_argument("--out", type=Path, default=Path("step_cost.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    backend = TorchBackend.from_checkpoint(load_checkpoint(args.model, with_adapter=False))
    compiled = torch.compile(backend.model, dynamic=False) if args.compile else None
    records = []
    print("| width | batch | step ms | forward ms | host ms | host share | compiled forward ms | compiled / eager |")
    print("|---|---|---|---|---|---|---|---|")
    for label, width in widths(backend.config.block_size).items():
        for batch in BATCHES:
            requests = requests_for(backend, batch, width, args.past)
            with torch.inference_mode():
                step_ms = median_ms(lambda requests=requests: backend.step(requests), args.repeat)
                forward_ms = median_ms(forward_only(backend, requests), args.repeat)
                compiled_ms = None
                if compiled is not None:
                    eager_model, backend.model = backend.model, compiled
                    run = forward_only(backend, requests)
                    run()  # compiles this shape
                    compiled_ms = median_ms(run, args.repeat)
                    backend.model = eager_model
            host = step_ms - forward_ms
            record = {"width": width, "label": label, "batch": batch, "step_ms": round(step_ms, 3)}
            record |= {"forward_ms": round(forward_ms, 3), "host_ms": round(host, 3)}
            record["compiled_forward_ms"] = compiled_ms
            records.append(record)
            ratio = f"{compiled_ms / forward_ms:.2f}" if compiled_ms else "-"
            shown = f"{compiled_ms:.2f}" if compiled_ms else "-"
            share = f"{host / step_ms:.0%}"
            cells = [label, batch, f"{step_ms:.2f}", f"{forward_ms:.2f}", f"{host:.2f}", share, shown, ratio]
            print("| " + " | ".join(map(str, cells)) + " |")
    config = backend.config
    layouts = layout_rows(config.hidden_size, config.intermediate_size, args.repeat) if args.layouts else []
    if layouts:
        print("\n| weight layout | rows | us per linear | GB/s of weights |")
        print("|---|---|---|---|")
        for row in layouts:
            print(f"| {row['layout']} | {row['rows']} | {row['us']} | {row['GB/s']} |")
    context = {"host": platform.node(), "cpu": platform.processor() or platform.machine(), "threads": args.threads}
    context |= {"torch": torch.__version__, "model": args.model, "past": args.past, "date": time.strftime("%Y-%m-%d")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"context": context, "steps": records, "layouts": layouts}, indent=2) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
