#!/usr/bin/env python3
"""Eager steps, two attention forms side by side (issue 24): the past read where it lies in the KV store
with split attention (`nld.model.split_attention`, what compiled steps run) against past and new K/V
joined for one fused SDPA call (what eager steps run since this measurement). Built-in model, torch
backend, eager; each (mode, users) point alternates the two forms for `--rounds` rounds; reported: the
median rate of each form and the median of the per-round ratios (the pairs share the machine's drift).

    .venv/bin/python research/runtime/attention_ab.py [--points ar@1,ar@16,linear-spec@1,linear-spec@16]
        [--rounds 3] [--max-new-tokens 64] [--prompts N] [--out build/attention_ab.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

import nld.backends.torch_backend as torch_backend
from nld.backends.compiled import step_network
from nld.bench.prompts import load_prompts
from nld.bench.runner import SweepPoint, run_point
from nld.generate import load_backend
from nld.models import default_model_dir
from nld.tokenizer import NLDTokenizer

FORMS = {"split (in place)": True, "joined + SDPA": False}


def forced(split: bool):
    """`step_network` with its attention form fixed to `split`, whatever the caller asks."""

    def network(*args: object, split_attention: bool = True) -> object:
        return step_network(*args, split_attention=split)  # type: ignore[arg-type]

    return network


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="ar@1,ar@16,linear-spec@1,linear-spec@16", help="MODE@USERS, ...")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, help="only the first N of the 22 built-in prompts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("build/attention_ab.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    prompts = [(prompt, tokenizer.encode_prompt(prompt.text)) for prompt in load_prompts()][: args.prompts]
    backend = load_backend(str(default_model_dir()), compile=False)
    points = [(mode, int(users)) for mode, _, users in (point.partition("@") for point in args.points.split(","))]
    rates: dict[str, list[float]] = {}
    original = torch_backend.step_network
    try:
        for round_index in range(args.rounds):
            print(f"round {round_index + 1} of {args.rounds}", file=sys.stderr)
            for mode, users in points:
                for form, split in FORMS.items():
                    torch_backend.step_network = forced(split)
                    record = run_point(backend, prompts, SweepPoint(mode, users), args.max_new_tokens)
                    rates.setdefault(f"{mode}|{users}|{form}", []).append(record["output_tokens_per_s"])
    finally:
        torch_backend.step_network = original
    rows = []
    print("| mode | users | " + " | ".join(f"{form} tok/s" for form in FORMS) + " | joined / split, per round |")
    print("|---|---|" + "---|" * (len(FORMS) + 1))
    for mode, users in points:
        split_rounds, joined_rounds = (rates[f"{mode}|{users}|{form}"] for form in FORMS)
        paired = statistics.median(joined / split for split, joined in zip(split_rounds, joined_rounds, strict=True))
        split, joined = statistics.median(split_rounds), statistics.median(joined_rounds)
        rows.append({"mode": mode, "users": users, "split_tok_s": split, "joined_tok_s": joined, "ratio": paired})
        print(f"| {mode} | {users} | {split} | {joined} | {paired:.3f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "rounds": rates, "threads": args.threads}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
