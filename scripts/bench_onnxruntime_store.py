#!/usr/bin/env python3
"""The onnxruntime backend with and without its in-place graph (issue 24, item 1), in one run: per mode
and concurrency, output tokens/s, host time per forward and the share of forwards the in-place graph
ran, for the same backend (the same sessions) once reading the KV store in place (`in-place`: layer-major
store, GroupQueryAttention over its buffers) and once copying each layer's past per step (`copy`: the
plain graph alone). `--spinning` adds the backend as it was before both changes (`spinning`: the plain
graph alone, in sessions whose thread pools spin between operators, onnxruntime's default).

    .venv/bin/python scripts/bench_onnxruntime_store.py [--model DIR] [--modes ar,linear-spec,...]
        [--concurrency 1,16] [--rounds 3] [--max-new-tokens 64] [--prompts N] [--threads 2]
        [--spinning] [--out docs/bench/onnxruntime_store.json]

Each round measures every cell, the two variants of a cell one after the other; the table shows medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path
from unittest import mock

import torch

from nld.backends import onnxruntime_backend
from nld.bench.prompts import load_prompts
from nld.bench.runner import SweepPoint, run_point
from nld.bench.sweep import run_facts
from nld.generate import load_backend
from nld.models import default_model_dir
from nld.tokenizer import NLDTokenizer

MODES = ("ar", "linear-spec", "diffusion", "quadratic-spec")


def variants(model: str, spinning: bool) -> dict[str, object]:
    """The backend reading the store in place, a shallow copy of it without the in-place graph, and with
    `spinning` one more backend whose sessions spin (onnxruntime's default), without the in-place graph."""
    in_place = load_backend(model, "onnxruntime")
    if not in_place.store_sessions:  # type: ignore[attr-defined]
        sys.exit("the onnxruntime backend has no in-place graph here: nothing to compare")
    copied = copy.copy(in_place)
    copied.store_sessions = {}  # type: ignore[attr-defined]
    found = {"copy": copied, "in-place": in_place}
    if not spinning:
        return found
    plain_options = onnxruntime_backend.session_options

    def spinning_options() -> object:
        options = plain_options()
        for pool in ("intra", "inter"):
            options.add_session_config_entry(f"session.{pool}_op.allow_spinning", "1")
        return options

    with mock.patch.object(onnxruntime_backend, "session_options", spinning_options):
        before = load_backend(model, "onnxruntime")
    before.store_sessions = {}  # type: ignore[attr-defined]
    return {"spinning": before, **found}


def measure(backend: object, prompts: list, mode: str, users: int, max_new_tokens: int) -> dict:
    """One cell's record, with the share of its forwards (warm-up included) that ran in place."""
    counters = ("store_graph_steps", "plain_graph_steps")
    before = [getattr(backend, name) for name in counters]
    record = run_point(backend, prompts, SweepPoint(mode, users), max_new_tokens)  # type: ignore[arg-type]
    in_place, plain = (getattr(backend, name) - start for name, start in zip(counters, before, strict=True))
    record["in_place_share"] = round(in_place / max(1, in_place + plain), 3)
    return record


def table(cells: dict[tuple[str, int, str], list[dict]], modes: list[str], levels: list[int], names: list[str]) -> str:
    """Medians per cell: tok/s of each variant, each against `copy`, host ms per forward, in-place share."""

    def median(mode: str, users: int, variant: str, key: str) -> float:
        return statistics.median(record[key] for record in cells[(mode, users, variant)])

    head = [f"{name} tok/s" for name in names] + [f"{name} / copy" for name in names if name != "copy"]
    head += [f"{name} host ms/fwd" for name in names] + ["in-place share of forwards"]
    lines = ["| mode | users | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(head)]
    for mode in modes:
        for users in levels:
            rates = {name: median(mode, users, name, "output_tokens_per_s") for name in names}
            shown = [f"{rates[name]:.1f}" for name in names]
            shown += [f"{rates[name] / rates['copy']:.2f}x" for name in names if name != "copy"]
            shown += [f"{median(mode, users, name, 'host_ms_per_forward'):.3f}" for name in names]
            shown.append(f"{median(mode, users, 'in-place', 'in_place_share'):.0%}")
            lines.append(f"| {mode} | {users} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint (default: the built-in tiny model)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, help="use only the first N of the 22 prompts")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in process")
    parser.add_argument("--spinning", action="store_true", help="also the backend with spinning thread pools")
    parser.add_argument("--out", type=Path, default=Path("onnxruntime_store.json"))
    args = parser.parse_args()
    modes = [mode for mode in args.modes.split(",") if mode]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    levels = [int(level) for level in args.concurrency.split(",") if level]
    torch.set_num_threads(args.threads)
    model = args.model or str(default_model_dir())
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    prompts = [(prompt, tokenizer.encode_prompt(prompt.text)) for prompt in load_prompts()][: args.prompts]
    backends = variants(model, args.spinning)
    cells: dict[tuple[str, int, str], list[dict]] = {}
    for round_index in range(args.rounds):
        print(f"round {round_index + 1} of {args.rounds}", file=sys.stderr)
        for mode in modes:
            for users in levels:
                for variant, backend in backends.items():
                    record = measure(backend, prompts, mode, users, args.max_new_tokens)
                    cells.setdefault((mode, users, variant), []).append(record)
                    shown = f"{variant:>9} {mode:>14} x{users:<3} {record['output_tokens_per_s']:>9} tok/s"
                    print(f"  {shown} ({record['in_place_share']:.0%} in place)", file=sys.stderr)
    print(table(cells, modes, levels, list(backends)))
    facts = {**run_facts(), "threads": args.threads, "model": args.model or "built-in"}
    rows = [{"mode": m, "users": u, "variant": v, "rounds": records} for (m, u, v), records in cells.items()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"facts": facts, "command": sys.argv, "cells": rows}, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
