#!/usr/bin/env python3
"""Does it matter which thread steps the model? (The question behind nld/engine/model_thread.py.)

A server loads its model on one thread and, before, stepped it on another (the engine's background
thread). torch's CPU kernels run on libgomp, which keeps a worker pool per thread that ran a parallel
region. This times AR at one user (the built-in model, greedy, `--max-new-tokens` per prompt) with the
model placed three ways, each in a fresh process so no pool carries over from one to the next:

- `main`: loaded and stepped on the main thread (the in-process benchmark);
- `split`: loaded on the main thread, stepped on another (the servers before);
- `one-thread`: loaded and stepped on one new thread (the servers now: `Engine.launch`).

It also reports each placement's CPU seconds per token by thread, which shows libgomp's worker idling
(sleeping between parallel regions) instead of spinning in `split`.

    .venv/bin/python research/runtime/model_thread_probe.py [--rounds 3] [--prompts 11]
        [--max-new-tokens 64] [--no-compile] [--out model_thread_probe.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PLACEMENTS = ("main", "split", "one-thread")

CHILD = """
import json, os, sys, threading, time
import torch
from nld.bench.prompts import load_prompts
from nld.bench.runner import SweepPoint, run_point
from nld.generate import load_backend
from nld.models import default_model_dir
from nld.tokenizer import NLDTokenizer

placement, prompts, tokens, compile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
model = str(default_model_dir())
tokenizer = NLDTokenizer.from_dir(model)
ids = [(prompt, tokenizer.encode_prompt(prompt.text)) for prompt in load_prompts()[:prompts]]

def load():
    return load_backend(model, compile=compile)

def thread_seconds():  # CPU seconds of each of this process's threads (Linux: /proc/self/task/*/stat)
    tick = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for task in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{task}/stat").read().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        seconds[task] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return seconds

def measure(backend):
    run_point(backend, ids, SweepPoint("ar", 1), tokens)  # warm: compile, allocate
    before = thread_seconds()
    record = run_point(backend, ids, SweepPoint("ar", 1), tokens)
    after = thread_seconds()
    busy = sorted((after[k] - before.get(k, 0.0) for k in after), reverse=True)[:3]
    return record["output_tokens_per_s"], [round(1000 * b / record["output_tokens"], 3) for b in busy]

def on_new_thread(job):
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("out", job()))
    worker.start()
    worker.join()
    return box["out"]

if placement == "main":
    out = measure(load())
elif placement == "split":
    backend = load()
    out = on_new_thread(lambda: measure(backend))
else:
    out = on_new_thread(lambda: measure(load()))
print(json.dumps({"tok_s": out[0], "cpu_ms_per_token_by_thread": out[1]}))
"""


def run_child(placement: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, "-c", CHILD, placement, str(args.prompts), str(args.max_new_tokens)]
    done = subprocess.run([*command, "1" if args.compile else "0"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{placement}: the child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=11)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("model_thread_probe.json"))
    args = parser.parse_args()
    rounds: dict[str, list[dict]] = {placement: [] for placement in PLACEMENTS}
    for index in range(args.rounds):
        print(f"round {index + 1} of {args.rounds}", file=sys.stderr)
        for placement in PLACEMENTS:  # one after another in each round: drift hits all of them
            rounds[placement].append(run_child(placement, args))
    main_tok_s = statistics.median(record["tok_s"] for record in rounds["main"])
    rows = []
    print("| placement | tok/s (median) | vs main | CPU ms per token, busiest threads (last round) |")
    print("|---|---|---|---|")
    for placement, records in rounds.items():
        tok_s = statistics.median(record["tok_s"] for record in records)
        busy = records[-1]["cpu_ms_per_token_by_thread"]
        ratio = round(tok_s / main_tok_s, 3)
        rows.append({"placement": placement, "tok_s": tok_s, "vs_main": ratio, "rounds": records})
        print(f"| {placement} | {tok_s:.1f} | {tok_s / main_tok_s:.2f}x | {', '.join(map(str, busy))} |")
    settings = {"prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "compile": args.compile}
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
