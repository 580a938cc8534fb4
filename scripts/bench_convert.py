#!/usr/bin/env python3
"""Benchmark the TRT-LLM export on a checkpoint shaped like NLD-8B (random bf16 weights, generated here).

Prints a table and writes JSON: conversion time and throughput as a ratio to copying the same bytes,
and the conversion's peak memory (max RSS of the converting process) against the largest tensor.

    .venv/bin/python scripts/bench_convert.py --layers 34 --tp 1 --out docs/bench_convert.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from nld.checkpoint import expected_shapes
from nld.config import parse_config
from nld.convert.safetensors_stream import write_streaming
from nld.models.released import RELEASED_CONFIGS

EIGHT_B = RELEASED_CONFIGS["8b"]


def random_checkpoint(directory: Path, layers: int) -> tuple[int, int]:
    """Write an 8B-shaped checkpoint with `layers` layers, one tensor at a time. Returns (bytes, largest)."""
    config = {**EIGHT_B, "num_hidden_layers": layers}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    shapes = expected_shapes(parse_config(config))
    generator = torch.Generator().manual_seed(0)

    def produce(name: str) -> torch.Tensor:
        return (torch.randn(shapes[name], generator=generator) * 0.02).to(torch.bfloat16)

    entries = [(name, shape, torch.bfloat16) for name, shape in shapes.items()]
    total = write_streaming(directory / "model.safetensors", entries, produce)
    return total, max(math.prod(shape) * 2 for shape in shapes.values())


def _child(code: str) -> tuple[float, int]:
    """Run Python `code` in a fresh process; (seconds, that process's own peak RSS in bytes)."""
    # VmHWM: peak RSS of this address space (ru_maxrss would carry the parent's peak across exec).
    report = "; print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))"
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code + report], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    return seconds, int(run.stdout.split()[-1]) * 1024  # VmHWM is in kB


def measure(layers: int, tp: int, work: Path) -> dict:
    """Generate, copy and convert; the import-only process runs first so later peaks are attributable."""
    source = work / "model"
    total, largest = random_checkpoint(source, layers)
    import_seconds, import_rss = _child("import nld.convert.trtllm")
    started = time.perf_counter()
    shutil.copyfile(source / "model.safetensors", work / "copy.safetensors")
    copy_seconds = time.perf_counter() - started
    (work / "copy.safetensors").unlink()
    code = (
        "from nld.convert.trtllm import export_trtllm; "
        f"export_trtllm({str(source)!r}, {str(work / 'trtllm')!r}, tp={tp}, dtype='bfloat16')"
    )
    convert_seconds, convert_rss = _child(code)
    return {
        "layers": layers,
        "tp": tp,
        "checkpoint_bytes": total,
        "largest_tensor_bytes": largest,
        "copy_seconds": copy_seconds,
        "convert_seconds": convert_seconds,
        "convert_over_copy_time": convert_seconds / copy_seconds,
        "import_only_peak_rss": import_rss,
        "convert_peak_rss": convert_rss,
        "convert_extra_rss_over_largest_tensor": (convert_rss - import_rss) / largest,
        "import_seconds": import_seconds,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=34, help="decoder layers (the 8B has 34)")
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--out", type=Path, default=Path("bench_convert.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as scratch:
        result = measure(args.layers, args.tp, Path(scratch))
    result["machine"] = {"processor": platform.processor() or platform.machine(), "python": platform.python_version()}
    gib = 2**30
    print("| layers | tp | checkpoint | largest tensor | copy s | convert s | convert / copy | peak RSS - import RSS |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {result['layers']} | {result['tp']} | {result['checkpoint_bytes'] / gib:.2f} GiB "
        f"| {result['largest_tensor_bytes'] / gib:.2f} GiB | {result['copy_seconds']:.1f} "
        f"| {result['convert_seconds']:.1f} | {result['convert_over_copy_time']:.2f} "
        f"| {result['convert_extra_rss_over_largest_tensor']:.2f} x largest |"
    )
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
