#!/usr/bin/env python3
"""In process vs Triton gRPC (`nld serve`) vs Dynamo OpenAI (`nld serve-openai`): the same prompts, modes
and settings through each path, in one run, side by side.

    .venv/bin/python scripts/bench_frontends.py [--modes ar,linear-spec] [--concurrency 1] [--out build/frontends.json]

Each server runs one engine (one Triton model instance, one Dynamo worker) with the engine's default
settings, started and stopped by this script on free loopback ports. Prints a Markdown table (tok/s per
path and its ratio to in process) and writes every record as JSON. Results: docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

from nld.bench.prompts import load_prompts
from nld.bench.sweep import BenchSettings, in_process, run_sweep, served, served_openai
from nld.generate import load_backend
from nld.models import default_model_dir
from nld.serving.openai_server import OpenAIServer, OpenAISettings
from nld.serving.repository import RepositorySettings, write_repository
from nld.serving.served_names import default_served_name
from nld.serving.server import ServerSettings, TritonServer, free_port
from nld.tokenizer import NLDTokenizer

PATHS = ("in process", "Triton gRPC", "Dynamo OpenAI")


def measure_all(model: str, settings: BenchSettings, prompts: list) -> dict[str, list[dict]]:
    tokenizer = NLDTokenizer.from_dir(model)
    assert tokenizer is not None, f"{model}: no tokenizer.json"
    results = {
        PATHS[0]: run_sweep(in_process(load_backend(model), tokenizer, prompts, settings), len(prompts), settings)
    }
    with tempfile.TemporaryDirectory(prefix="nld-bench-frontends-") as scratch:
        repo = write_repository(Path(scratch) / "repo", RepositorySettings(model_dir=model))
        ports = [free_port() for _ in range(3)]
        triton = ServerSettings(repo, grpc_port=ports[0], http_port=ports[1], metrics_port=ports[2])
        with TritonServer(triton):
            results[PATHS[1]] = run_sweep(
                served(triton.grpc_url, triton.metrics_url, prompts, settings), len(prompts), settings
            )
    name = default_served_name(model)
    openai_settings = OpenAISettings(name=name, worker_options=("--model", model), http_port=free_port())
    with OpenAIServer(openai_settings) as server:
        metrics = [worker.metrics_url for worker in server.workers]
        measure = served_openai(openai_settings.url, name, metrics, tokenizer, prompts, settings)
        results[PATHS[2]] = run_sweep(measure, len(prompts), settings)
    return results


def markdown(results: dict[str, list[dict]]) -> str:
    header = (
        "| mode | users | "
        + " | ".join(f"{path} tok/s" for path in PATHS)
        + " | Triton / in process | OpenAI / in process | TPF (all) |"
    )
    lines = [header, "|" + "---|" * (len(PATHS) + 5)]
    for index, local in enumerate(results[PATHS[0]]):
        rates = [results[path][index]["output_tokens_per_s"] for path in PATHS]
        tpf = sorted({str(results[path][index]["tokens_per_forward"]) for path in PATHS})
        ratios = [f"{rate / rates[0]:.2f}x" for rate in rates[1:]]
        lines.append(
            f"| {local['mode']} | {local['concurrency']} | "
            + " | ".join(map(str, rates))
            + f" | {' | '.join(ratios)} | {', '.join(tpf)} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the built-in tiny model)")
    parser.add_argument("--modes", default="ar,diffusion,linear-spec,quadratic-spec")
    parser.add_argument("--concurrency", default="1")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("build/frontends.json"))
    args = parser.parse_args()
    model = str(args.model or default_model_dir())
    settings = BenchSettings(
        tuple(args.modes.split(",")), tuple(int(level) for level in args.concurrency.split(",")), args.max_new_tokens
    )
    results = measure_all(model, settings, load_prompts())
    table = markdown(results)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    host = {"machine": platform.machine(), "cpus": os.cpu_count(), "node": platform.node()}
    record = {
        "model": model,
        "host": host,
        "settings": vars(args) | {"out": str(args.out)},
        "table": table,
        "records": results,
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
