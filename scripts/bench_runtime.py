#!/usr/bin/env python3
"""Where decode time goes, in one run (issue 24): per mode and concurrency, output tokens/s, batched
forwards/s and the host time per forward (everything but the network), for the torch backend eager and
compiled, in process and through the servers (Triton gRPC, Dynamo OpenAI), optionally beside another
checkout's eager path (`--baseline DIR`: a `git worktree` of an earlier commit, run in a child process).

    .venv/bin/python scripts/bench_runtime.py [--model DIR | --shape 133m] [--modes ar,diffusion,...]
        [--concurrency 1,4,16] [--served 1] [--paths in-process,triton,openai] [--variants eager,compiled]
        [--rounds 3] [--repeat 1] [--max-new-tokens 64] [--prompt-tokens N] [--threads 2] [--stream-interval-ms 10]
        [--baseline DIR] [--out docs/bench/runtime.json]

A mode may name a block length, `quadratic-spec@4` (measured in process only, compiled at its own
width). Every cell is measured `--rounds`
times, the variants and paths of one point one after another in each round (so a machine that drifts
drifts for all of them), and reported as the median. In-process and served points of one variant are
paired while that variant's server is up. Prints one Markdown table, then the ratios the targets are
about; writes every round of every cell as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import torch

from nld.backends.compiled import decode_widths
from nld.backends.torch_backend import compiled_steps
from nld.bench.prompts import load_prompts
from nld.bench.runner import SweepPoint, run_point
from nld.bench.served import grpc_session, openai_session, run_point_served
from nld.bench.shapes import SHAPES, machine_ceilings, random_checkpoint
from nld.bench.sweep import run_facts
from nld.generate import load_backend
from nld.models import default_model_dir
from nld.modes.quadratic_spec import default_block
from nld.serving.openai_server import OpenAIServer, OpenAISettings
from nld.serving.repository import STREAM_INTERVAL_MS, RepositorySettings, compile_setting, write_repository
from nld.serving.served_names import default_served_name
from nld.serving.server import ServerSettings, TritonServer, free_port
from nld.tokenizer import NLDTokenizer

VARIANTS = {"eager": False, "compiled": True}
PATHS = {"in-process": "in process", "triton": "Triton gRPC", "openai": "Dynamo OpenAI"}
# The old checkout's in-process point, run in a child process with that checkout first on sys.path.
BASELINE_CHILD = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
from nld.bench.prompts import BenchPrompt
from pathlib import Path
import nld
from nld.bench.runner import SweepPoint, run_point
from nld.generate import load_backend
checkout = Path(sys.argv[4]).resolve()
if not Path(nld.__file__).resolve().is_relative_to(checkout):
    sys.exit(f"the baseline child imported nld from {nld.__file__}, not from {checkout}")
job = json.loads(sys.argv[2])
backend = load_backend(sys.argv[1])
prompts = [(BenchPrompt("bench", ""), ids) for ids in job["prompts"]]
point = SweepPoint(job["mode"], job["concurrency"])
block = job["block_length"]
print(json.dumps(run_point(backend, prompts, point, job["max_new_tokens"], repeat=job["repeat"], block_length=block)))
"""


def prompt_ids(model: str, length: int | None) -> list[list[int]]:
    """The built-in prompt set as the server encodes it; with `length`, each cut or cycled to that many ids."""
    tokenizer = NLDTokenizer.from_dir(default_model_dir())  # the built-in model's (random shapes have none)
    assert tokenizer is not None
    encoded = [tokenizer.encode_prompt(prompt.text) for prompt in load_prompts()]
    if length is None:
        return encoded
    return [(ids * (length // len(ids) + 1))[:length] for ids in encoded]


class Bench:
    """The measured cells: (variant, path, mode, users) -> one record per round."""

    def __init__(self, args: argparse.Namespace, model: str) -> None:
        self.args = args
        self.model = model
        self.ids = prompt_ids(model, args.prompt_tokens)[: args.prompts]
        self.prompts = list(zip(load_prompts(), self.ids, strict=False))
        self.cells: dict[tuple[str, str, str, int], list[dict]] = {}
        self.compile_seconds: dict[str, float] = {}

    def record(self, variant: str, path: str, mode: str, users: int, record: dict) -> None:
        self.cells.setdefault((variant, path, mode, users), []).append(record)
        shown = f"{variant:>9} {PATHS.get(path, path):>13} {mode:>14} x{users:<3}"
        print(f"  {shown} {record['output_tokens_per_s']:>9} tok/s", file=sys.stderr)

    def in_process(self, backend: object, variant: str, mode: str, users: int) -> None:
        name, block = split_mode(mode)
        point = SweepPoint(name, users)
        args = self.args
        record = run_point(backend, self.prompts, point, args.max_new_tokens, repeat=args.repeat, block_length=block)  # type: ignore[arg-type]
        self.record(variant, "in-process", mode, users, record)

    def baseline(self, mode: str, users: int) -> None:
        name, block = split_mode(mode)
        job = {"prompts": self.ids, "mode": name, "concurrency": users, "block_length": block}
        job |= {"max_new_tokens": self.args.max_new_tokens, "repeat": self.args.repeat}
        code = BASELINE_CHILD
        checkout = str(self.args.baseline.resolve())
        model = str(Path(self.model).resolve())
        command = [sys.executable, "-c", code, model, json.dumps(job), str(self.args.threads), checkout]
        # `python -c` puts the working directory first on sys.path: run in the checkout, so its nld is imported
        env = {"PYTHONPATH": checkout}
        done = subprocess.run(
            command, capture_output=True, text=True, env=env | _inherited_env(), cwd=checkout, check=False
        )
        if done.returncode != 0:
            raise SystemExit(f"the baseline checkout's run failed:\n{done.stderr[-3000:]}")
        self.record("baseline", "in-process", mode, users, json.loads(done.stdout.strip().splitlines()[-1]))


def split_mode(mode: str) -> tuple[str, int | None]:
    """`quadratic-spec@4` -> ("quadratic-spec", 4): a mode at a block length other than its default."""
    name, _, block = mode.partition("@")
    return name, int(block) if block else None


def compiled_widths(block_size: int, modes: list[str], device: str) -> list[int]:
    """The step widths the swept modes use on `device`: the defaults, plus B or B(B+1) for each `mode@B`."""
    widths = set(decode_widths(block_size, default_block(block_size, device)))
    for name, block in map(split_mode, modes):
        if block is not None:
            widths.add(block * (block + 1) if name == "quadratic-spec" else block)
    return sorted(widths)


def open_backend(model: str, variant: str, modes: list[str]) -> object:
    """The torch backend of `variant`; compiled for every width the swept modes step at."""
    backend = load_backend(model, compile=False)
    if VARIANTS[variant]:
        network = backend.model  # type: ignore[attr-defined]
        widths = compiled_widths(network.config.block_size, modes, backend.device.type)  # type: ignore[attr-defined]
        backend.compiled = compiled_steps(network, widths)  # type: ignore[attr-defined]
    return backend


def _inherited_env() -> dict[str, str]:
    import os

    return {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


def measure_in_process(bench: Bench, backends: dict[str, object]) -> None:
    """Every mode x concurrency, eager / compiled (/ baseline) one after another, `rounds` times."""
    args = bench.args
    for round_index in range(args.rounds):
        print(f"in process, round {round_index + 1} of {args.rounds}", file=sys.stderr)
        for mode in args.modes:
            for users in args.concurrency:
                for variant, backend in backends.items():
                    bench.in_process(backend, variant, mode, users)
                if args.baseline:
                    bench.baseline(mode, users)


def measure_served(bench: Bench, backends: dict[str, object]) -> None:
    """Per variant, with its servers up: in process and each server path, one after another."""
    args = bench.args
    served_paths = [path for path in args.paths if path != "in-process"]
    if not served_paths or not args.served:
        return
    for variant, backend in backends.items():
        with ExitStack() as stack:
            sessions = {path: _start(stack, path, bench, variant) for path in served_paths}
            for round_index in range(args.rounds):
                print(f"served ({variant}), round {round_index + 1} of {args.rounds}", file=sys.stderr)
                for mode in (mode for mode in args.modes if "@" not in mode):  # default block lengths only
                    for users in args.served:
                        bench.in_process(backend, variant, mode, users)
                        for path, measure in sessions.items():
                            name, block = split_mode(mode)
                            bench.record(variant, path, mode, users, measure(SweepPoint(name, users), block))


def _start(stack: ExitStack, path: str, bench: Bench, variant: str) -> Callable[[SweepPoint, int | None], dict]:
    """Start `path`'s server for `variant` (an engine as wide as the most users served) and return how to
    measure a point through it."""
    args, model = bench.args, bench.model
    flag = VARIANTS[variant]
    width = max(args.served)
    prompts = load_prompts()[: args.prompts]
    if path == "triton":
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nld-bench-runtime-")))
        settings = RepositorySettings(
            model_dir=model, max_batch=width, compile=compile_setting(flag), stream_interval_ms=args.stream_interval_ms
        )
        repo = write_repository(scratch / "repo", settings)
        ports = [free_port() for _ in range(3)]
        server = ServerSettings(repo, grpc_port=ports[0], http_port=ports[1], metrics_port=ports[2])
        stack.enter_context(TritonServer(server))
        return lambda point, block: run_point_served(
            grpc_session(server.grpc_url, point, args.max_new_tokens, block),
            prompts,
            point,
            1,
            args.repeat,
            [server.metrics_url],
        )
    name = default_served_name(model)
    options = ("--model", model, "--max-batch", str(width), "--compile" if flag else "--no-compile")
    options += ("--stream-interval-ms", str(args.stream_interval_ms))
    settings = OpenAISettings(name=name, worker_options=options, http_port=free_port())
    server = stack.enter_context(OpenAIServer(settings))
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None

    def count(text: str) -> int:
        return len(tokenizer.tokenizer.encode(text, add_special_tokens=False).ids)

    metrics = [worker.metrics_url for worker in server.workers]
    return lambda point, block: run_point_served(
        openai_session(settings.url, name, point, args.max_new_tokens, count, block),
        prompts,
        point,
        1,
        args.repeat,
        metrics,
        per_response_stats=False,
    )


def median(records: list[dict], key: str) -> float | None:
    values = [record[key] for record in records if record.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def table(bench: Bench) -> str:
    columns = ("tok/s", "forwards/s", "TPF", "host ms / forward", "rounds")
    lines = ["| variant | path | mode | users | " + " | ".join(columns) + " |", "|" + "---|" * (4 + len(columns))]
    for (variant, path, mode, users), records in sorted(bench.cells.items(), key=_order):
        cells = [
            median(records, "output_tokens_per_s"),
            median(records, "batched_forwards_per_s"),
            median(records, "tokens_per_forward"),
            median(records, "host_ms_per_forward"),
            len(records),
        ]
        shown = ["-" if cell is None else str(cell) for cell in cells]
        lines.append(f"| {variant} | {PATHS[path]} | {mode} | {users} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def _order(item: tuple[tuple[str, str, str, int], list[dict]]) -> tuple:
    variant, path, mode, users = item[0]
    variants = [*VARIANTS, "baseline"]
    return (variants.index(variant), list(PATHS).index(path), mode, users)


def ratios(bench: Bench) -> list[dict]:
    """The comparisons the targets name, each a ratio of two medians measured in this run."""
    rate: dict[tuple[str, str, str, int], float] = {}
    for key, records in bench.cells.items():
        value = median(records, "output_tokens_per_s")
        if value:
            rate[key] = value
    found = []

    def add(name: str, top: tuple, bottom: tuple) -> None:
        if top in rate and bottom in rate:
            found.append({"ratio": name, "value": round(rate[top] / rate[bottom], 3)})

    modes, levels = bench.args.modes, bench.args.concurrency
    for variant in [*VARIANTS, "baseline"]:
        for mode in modes:
            if mode != "ar":
                add(
                    f"{variant} {mode} / ar, 1 user", (variant, "in-process", mode, 1), (variant, "in-process", "ar", 1)
                )
        if 16 in levels:
            add(f"{variant} ar 16 users / 1 user", (variant, "in-process", "ar", 16), (variant, "in-process", "ar", 1))
    for mode in modes:
        for users in levels:
            add(
                f"compiled / eager, {mode}, {users}",
                ("compiled", "in-process", mode, users),
                ("eager", "in-process", mode, users),
            )
            for variant in VARIANTS:
                add(
                    f"{variant} / baseline, {mode}, {users}",
                    (variant, "in-process", mode, users),
                    ("baseline", "in-process", mode, users),
                )
        for users in bench.args.served or []:
            for variant in VARIANTS:
                for path in ("triton", "openai"):
                    add(
                        f"{variant} {PATHS[path]} / in process, {mode}, {users}",
                        (variant, path, mode, users),
                        (variant, "in-process", mode, users),
                    )
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="checkpoint (default: the built-in tiny model)")
    source.add_argument("--shape", choices=list(SHAPES), help="a random-weight model of this shape instead")
    parser.add_argument(
        "--modes", default="ar,diffusion,linear-spec,quadratic-spec", help="MODE or MODE@BLOCK_LENGTH, comma-separated"
    )
    parser.add_argument("--concurrency", default="1,4,16", help="in-process levels")
    parser.add_argument("--served", default="1", help="levels measured through the servers ('' for none)")
    parser.add_argument("--paths", default="in-process,triton,openai")
    parser.add_argument("--variants", default="eager,compiled", help="of eager,compiled (--baseline adds its own)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=1, help="passes over the 22 prompts per cell")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, help="cut or cycle every prompt to this many ids")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in process")
    parser.add_argument(
        "--stream-interval-ms", type=int, default=STREAM_INTERVAL_MS, help="the servers' stream interval"
    )
    parser.add_argument("--baseline", type=Path, help="another checkout whose eager path runs beside (child process)")
    parser.add_argument("--prompts", type=int, help="use only the first N of the 22 prompts")
    parser.add_argument("--ceilings", action="store_true", help="also measure the machine's GEMV/GEMM ceilings")
    parser.add_argument("--out", type=Path, default=Path("runtime.json"))
    args = parser.parse_args()
    args.modes = [mode for mode in args.modes.split(",") if mode]
    args.concurrency = [int(level) for level in args.concurrency.split(",") if level]
    args.served = [int(level) for level in args.served.split(",") if level]
    args.paths = [path for path in args.paths.split(",") if path]
    args.variants = [variant for variant in args.variants.split(",") if variant]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {sorted(VARIANTS)} (--baseline DIR adds 'baseline')")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="nld-bench-model-") as scratch:
        model = str(random_checkpoint(Path(scratch), args.shape) if args.shape else (args.model or default_model_dir()))
        bench = Bench(args, model)
        ceilings = machine_ceilings(model) if args.ceilings else None
        backends = {}
        for variant in args.variants:
            backends[variant] = open_backend(model, variant, args.modes)
        if "in-process" in args.paths:
            measure_in_process(bench, backends)
        if args.shape is None:  # servers need a tokenizer: the built-in model's prompts are text
            measure_served(bench, backends)
    for variant, backend in backends.items():
        bench.compile_seconds[variant] = round(getattr(backend, "compile_seconds", 0.0), 1)
    text = table(bench)
    found = ratios(bench)
    print(text)
    print("\n| ratio (medians of this run) | value |\n|---|---|")
    for entry in found:
        print(f"| {entry['ratio']} | {entry['value']} |")
    context = {"model": args.model or args.shape or "built-in", **run_facts(), "threads": args.threads}
    context |= {"settings": {k: str(v) for k, v in vars(args).items()}, "compile_seconds": bench.compile_seconds}
    if ceilings is not None:
        context["ceilings"] = ceilings
        print("\n| machine ceiling (measured) | value |\n|---|---|")
        for key, value in ceilings.items():
            print(f"| {key} | {value} |")
    cells = [
        {"variant": v, "path": p, "mode": m, "users": u, "rounds": records}
        for (v, p, m, u), records in sorted(bench.cells.items(), key=_order)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"context": context, "table": text, "ratios": found, "cells": cells}, indent=2) + "\n"
    )
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
