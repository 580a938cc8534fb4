#!/usr/bin/env python3
"""Train and evaluate many variants of the tiny model's recipe at once, on a GPU (or the CPU).

A search tool, not the shipping path: the built-in model is trained on the CPU by train_tiny.py, and a
GPU run of the same settings is other arithmetic (bf16 kernels of another device), so it gives another
model of the recipe. What a sweep measures is how a setting does across runs and seeds.

    # here: the token streams, the tokenizer and this interpreter's held-out evaluation files
    python research/tiny_model/sweep_tiny.py pack --data build/tiny-train --into .sweep
    # on the GPU machine: every variant of a grid in parallel, each trained, evaluated and prompted
    source scripts/gpu_env.sh   # the GPU machine's python3 lacks this package installed
    python3 research/tiny_model/sweep_tiny.py run --pack .sweep --grid chain-seeds --device cuda --out $OUT

Each variant runs `train_tiny.py` (from scratch, with the packed data), then `nld eval` on the packed
held-out files and `nld generate` on a few code prompts, in its own process. `run` prints a table and
writes sweep.json; variants unfinished at `--deadline` are stopped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from nld.corpus import evaluation_files, stdlib_corpus  # noqa: E402
from nld.evaluate import repeated_ngram_share  # noqa: E402
from nld.tiny.train import copy_token_data  # noqa: E402

W3 = ("chain_diffusion_weight=3.0", "chain_real_ar_weight=3.0")
# name -> [(variant name, TrainSettings overrides)]
GRIDS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "smoke": [("smoke", ())],
    "chain-seeds": [
        ("w1-s0", ()),
        ("w3-s0", W3),
        ("w3-s1", (*W3, "seed=1")),
        ("w3-s2", (*W3, "seed=2")),
        ("w1-s1", ("seed=1",)),
        ("w3g64-s0", (*W3, "chain_greedy_tokens=64")),
        ("w3g64-s1", (*W3, "chain_greedy_tokens=64", "seed=1")),
        ("w2-s0", ("chain_diffusion_weight=2.0", "chain_real_ar_weight=2.0")),
        ("w3r4-s0", ("chain_diffusion_weight=3.0", "chain_real_ar_weight=4.0")),
        ("w1r0-s0", ("chain_real_ar_weight=0.0",)),
    ],
}
DEMO_PROMPTS = ("def fibonacci(n):", "def is_prime(n):", "class Stack:")
SPEC_MODES = ("linear-spec", "quadratic-spec")


def pack(data: Path, into: Path) -> None:
    """Copy a work folder's tokenizer and token streams, and this interpreter's held-out evaluation files."""
    missing = [name for name in ("tokenizer.json", "tokens.npz") if not (data / name).is_file()]
    if missing:
        raise SystemExit(f"{data}: no {', '.join(missing)} (run train_tiny.py with --work {data} first)")
    partial = into.with_name(into.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in ("tokenizer.json", "tokens.npz"):
        shutil.copyfile(data / name, partial / name)
    corpus = stdlib_corpus()
    files = evaluation_files(corpus)
    for path in files:
        target = partial / "stdlib" / path.relative_to(corpus.root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    (partial / "python_version.txt").write_text(corpus.python_version + "\n")
    shutil.rmtree(into, ignore_errors=True)
    os.replace(partial, into)
    print(f"packed {data} and {len(files)} held-out files (Python {corpus.python_version}) into {into}")


def _command(*args: str | Path) -> list[str]:
    return [sys.executable, *map(str, args)]


def _last_progress(log: Path) -> str | None:
    """The last step line a variant's training logged (how far it got, at what rate)."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if "] step " in line]
    return lines[-1].strip() if lines else None


def run_variant(name: str, overrides: tuple[str, ...], args: argparse.Namespace, stop_at: float) -> dict:
    """Train, evaluate and prompt one variant; every step's output goes to RUNS/name.log."""
    work, model = args.runs / f"{name}-work", args.runs / name
    work.mkdir(parents=True, exist_ok=True)
    copy_token_data(work, args.pack)
    sets = [f"--set={item}" for item in (f"device={args.device}", "threads=1", "adapter.chunks=0", *overrides)]
    quick = ["--quick"] if args.quick else []
    eval_size = ["--prompts", "2", "--max-new-tokens", "8", "--perplexity-windows", "2"] if args.quick else []
    steps = [
        ("train", _command(REPO / "scripts" / "train_tiny.py", "--output", model, "--work", work, *sets, *quick)),
        (
            "eval",
            _command(
                "-m",
                "nld.cli",
                "eval",
                "--model",
                model,
                "--device",
                args.device,
                "--no-lora",
                "--stdlib",
                args.pack / "stdlib",
                "--out",
                args.runs / f"{name}-eval.json",
                *eval_size,
            ),
        ),
    ]
    for prompt in DEMO_PROMPTS:
        steps.append(
            (
                f"demo {prompt}",
                _command(
                    "-m", "nld.cli", "generate", "--model", model, "--device", args.device, "--prompt", prompt, "--json"
                ),
            )
        )
    record: dict = {"name": name, "overrides": list(overrides), "demos": {}}
    environment = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(args.runs / f"{name}.log", "w") as log:
        for label, command in steps:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            try:
                done = subprocess.run(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    env=environment,
                    timeout=max(1.0, stop_at - time.monotonic()),
                    cwd=REPO,
                )
            except subprocess.TimeoutExpired:
                record["failed"] = f"{label}: stopped at the deadline"
                record["last_progress"] = _last_progress(args.runs / f"{name}.log")
                return record
            log.write(done.stdout)
            if done.returncode:
                record["failed"] = f"{label}: exit {done.returncode} (see {name}.log)"
                return record
            if label == "train":
                record["train_minutes"] = round((time.perf_counter() - started) / 60, 2)
            elif label.startswith("demo"):
                output = json.loads(done.stdout.strip().splitlines()[-1])
                record["demos"][label[5:]] = {
                    "text": output.get("text"),
                    "repeated_4grams": round(repeated_ngram_share(output["prompt_ids"], output["new_ids"]), 3),
                }
    report = json.loads((args.runs / f"{name}-eval.json").read_text())
    modes = {m["mode"]: m for m in report["modes"]}
    record.update(
        perplexity=round(report["held_out_perplexity"], 2),
        linear_acceptance=round(modes["linear-spec"]["mean_acceptance_length"], 3),
        quadratic_tpf=round(modes["quadratic-spec"]["tokens_per_forward"], 3),
        repeated_4grams=round(modes["ar"]["repeated_4grams"], 3),
        equals_ar={mode: f"{modes[mode]['equals_ar']}/{modes[mode]['prompts']}" for mode in SPEC_MODES},
        training=json.loads((model / "training.json").read_text())["final"],
    )
    return record


def table(records: list[dict]) -> str:
    lines = [
        "| variant | overrides | quadratic TPF | linear acceptance | perplexity | repeated 4-grams (AR) "
        "| demo repeated 4-grams | spec = AR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if "failed" in r:
            lines.append(f"| {r['name']} | {' '.join(r['overrides']) or '-'} | {r['failed']} |||||| ")
            continue
        demo = " / ".join(f"{d['repeated_4grams']:.2f}" for d in r["demos"].values())
        lines.append(
            f"| {r['name']} | {' '.join(r['overrides']) or '-'} | {r['quadratic_tpf']:.2f} | "
            f"{r['linear_acceptance']:.2f} | {r['perplexity']:.2f} | {r['repeated_4grams']:.2f} | {demo} | "
            f"{', '.join(r['equals_ar'].values())} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.grid not in GRIDS:
        raise SystemExit(f"--grid {args.grid}: unknown (known: {', '.join(GRIDS)})")
    for needed in ("tokenizer.json", "tokens.npz", "stdlib"):
        if not (args.pack / needed).exists():
            raise SystemExit(f"--pack {args.pack}: no {needed} (make it with `sweep_tiny.py pack`)")
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    variants = GRIDS[args.grid]
    stop_at = time.monotonic() + args.deadline
    started = time.perf_counter()
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(run_variant, name, overrides, args, stop_at) for name, overrides in variants]
        records = [future.result() for future in futures]
    text = table(records)
    print(text)
    summary = {
        "grid": args.grid,
        "device": args.device,
        "quick": args.quick,
        "python_of_pack": (args.pack / "python_version.txt").read_text().strip(),
        "wall_minutes": round((time.perf_counter() - started) / 60, 2),
        "variants": records,
    }
    stem = f"sweep-{args.grid}"
    (args.out / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(text + "\n")
    return 1 if any("failed" in r for r in records) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    packing = commands.add_parser("pack", help="collect the data a sweep needs into one folder")
    packing.add_argument("--data", type=Path, required=True, help="a train_tiny.py work folder")
    packing.add_argument("--into", type=Path, required=True)
    running = commands.add_parser("run", help="train + evaluate every variant of a grid")
    running.add_argument("--pack", type=Path, required=True)
    running.add_argument("--grid", default="chain-seeds", help=f"one of {', '.join(GRIDS)}")
    running.add_argument("--device", default="cuda")
    running.add_argument("--parallel", type=int, default=4, help="variants at a time")
    running.add_argument("--deadline", type=float, default=3600, help="seconds before unfinished variants stop")
    running.add_argument("--runs", type=Path, default=REPO / "build" / "sweep", help="models, logs, eval JSON")
    running.add_argument("--out", type=Path, default=REPO / "build" / "sweep", help="sweep-GRID.json and .md")
    running.add_argument("--quick", action="store_true", help="a few steps per phase and a tiny eval (smoke)")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.data, args.into)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
