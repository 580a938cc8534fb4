#!/usr/bin/env python3
"""Fairness benchmark: a normal request's time alone vs beside each worst-case-but-valid request.

    .venv/bin/python scripts/bench_fairness.py [--model DIR] [--repeats 3] [--out build/fairness.json]

Prints a Markdown table and writes it as JSON (with the host and settings). Results: docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

from nld.bench.fairness import as_json, markdown, measure, worst_cases
from nld.generate import load_backend
from nld.models import default_model_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the built-in tiny model)")
    parser.add_argument("--repeats", type=int, default=3, help="normal requests timed per case (median)")
    parser.add_argument("--out", type=Path, default=Path("build/fairness.json"))
    args = parser.parse_args()
    model = args.model or default_model_dir()
    backend = load_backend(str(model))
    rows = measure(
        backend,
        worst_cases(backend.config.max_position_embeddings),
        args.repeats,
        progress=lambda line: print(line, file=sys.stderr),
    )
    print(markdown(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "model": str(model),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "repeats": args.repeats,
        "rows": as_json(rows),
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
