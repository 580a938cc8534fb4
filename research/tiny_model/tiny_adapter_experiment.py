#!/usr/bin/env python
"""Issue 3 experiment: distil a draft adapter of a chosen rank / lr / length on the shipped tiny model
(base frozen) and report held-out linear-spec acceptance with and without it (nothing is written).

    python research/tiny_model/tiny_adapter_experiment.py --rank 128 --lr 0.002 --chunks 100 [--work build/tiny-train]

`--work` is a training work folder holding `tokens.npz` (scripts/train_tiny.py writes it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nld.checkpoint import load_checkpoint
from nld.model import NLDTransformer
from nld.models import default_model_dir
from nld.tiny.draft_adapter import DraftAdapterSettings, distill_draft_adapter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--chunks", type=int, default=48)
    parser.add_argument("--updates-per-chunk", type=int, default=8)
    parser.add_argument("--work", type=Path, default=Path("build/tiny-train"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = np.load(args.work / "tokens.npz")
    train = torch.from_numpy(data["train"].astype(np.int64))
    held = torch.from_numpy(data["held_out"].astype(np.int64))
    model = NLDTransformer.from_checkpoint(load_checkpoint(default_model_dir(), with_adapter=False), torch.float32)
    settings = DraftAdapterSettings(
        rank=args.rank, alpha=2.0 * args.rank, chunks=args.chunks, updates_per_chunk=args.updates_per_chunk, lr=args.lr
    )
    began = time.time()

    def log(line: str) -> None:
        print(f"[{(time.time() - began) / 60:5.1f} min] {line}", flush=True)

    result = distill_draft_adapter(model, train, held, settings, args.work, log)
    log(f"report {result.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
