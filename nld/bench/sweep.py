"""The sweep (every mode x concurrency), its Markdown table and its JSON file."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nld.bench.crossover import CROSSOVER_FILE, SPECULATIVE, find_crossover
from nld.bench.plots import histograms, pareto_chart
from nld.bench.prompts import BenchPrompt
from nld.bench.runner import SweepPoint, run_point
from nld.bench.served import grpc_session, openai_session, run_point_served
from nld.errors import NLDError
from nld.modes import MODES
from nld.step import StepBackend
from nld.tokenizer import NLDTokenizer

TABLE_COLUMNS = (
    ("mode", "mode"),
    ("concurrency", "users"),
    ("tokens_per_forward", "TPF"),
    ("acceptance_length", "acceptance"),
    ("output_tokens_per_s", "tok/s total"),
    ("output_tokens_per_s_per_user", "tok/s per user"),
    ("forwards_per_s_per_user", "forwards/s per user"),
    ("ttft_ms_p50", "TTFT p50 ms"),
    ("ttft_ms_p99", "TTFT p99 ms"),
    ("itl_ms_p50", "ITL p50 ms"),
    ("itl_ms_p99", "ITL p99 ms"),
    ("runtime_overhead_share", "overhead"),
)


@dataclass(frozen=True)
class BenchSettings:
    modes: tuple[str, ...] = tuple(MODES)
    concurrency: tuple[int, ...] = (1, 4)
    max_new_tokens: int = 64
    warmup: int = 1
    repeat: int = 1
    block_length: int | None = None  # None: each mode's default

    def check(self) -> None:
        unknown = [mode for mode in self.modes if mode not in MODES]
        if unknown:
            raise NLDError(f"--modes: unknown {', '.join(unknown)} (choose from {', '.join(MODES)})")
        if not self.concurrency or min(self.concurrency) < 1:
            raise NLDError(f"--concurrency: every level must be >= 1, got {list(self.concurrency)}")
        for name in ("max_new_tokens", "repeat"):
            if getattr(self, name) < 1:
                raise NLDError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise NLDError(f"--warmup must be >= 0, got {self.warmup}")
        if self.block_length is not None and self.block_length < 1:
            raise NLDError(f"--block-length must be >= 1, got {self.block_length}")


Measure = Callable[[SweepPoint, Callable[[int], object]], dict]


def in_process(
    backend: StepBackend, tokenizer: NLDTokenizer, prompts: list[BenchPrompt], settings: BenchSettings
) -> Measure:
    """Points measured on the batching engine in this process."""
    encoded = [(prompt, tokenizer.encode_prompt(prompt.text)) for prompt in prompts]  # as the server does
    return lambda point, progress: run_point(
        backend,
        encoded,
        point,
        settings.max_new_tokens,
        settings.warmup,
        settings.repeat,
        progress,
        settings.block_length,
    )


def served(url: str, metrics_url: str | None, prompts: list[BenchPrompt], settings: BenchSettings) -> Measure:
    """Points measured through a running Triton server's gRPC endpoint."""
    return lambda point, progress: run_point_served(
        grpc_session(url, point, settings.max_new_tokens, settings.block_length),
        prompts,
        point,
        settings.warmup,
        settings.repeat,
        [metrics_url] if metrics_url else [],
        progress,
    )


def served_openai(
    url: str,
    model: str,
    metrics_urls: list[str],
    tokenizer: NLDTokenizer,
    prompts: list[BenchPrompt],
    settings: BenchSettings,
) -> Measure:
    """Points measured through an OpenAI-compatible endpoint (`nld serve-openai`), model `<model>:<mode>`;
    `metrics_urls` are the workers' (tokens/forward and acceptance come from their counters)."""

    def count_tokens(text: str) -> int:
        return len(tokenizer.tokenizer.encode(text, add_special_tokens=False).ids)

    return lambda point, progress: run_point_served(
        openai_session(url, model, point, settings.max_new_tokens, count_tokens, settings.block_length),
        prompts,
        point,
        settings.warmup,
        settings.repeat,
        metrics_urls,
        progress,
        per_response_stats=False,
    )


def run_sweep(measure: Measure, requests_per_point: int, settings: BenchSettings) -> list[dict]:
    """One record per mode x concurrency, with a progress bar over all measured requests."""
    settings.check()
    points = [SweepPoint(mode, level) for mode in settings.modes for level in settings.concurrency]
    records = []
    with tqdm(total=len(points) * requests_per_point * settings.repeat, desc="bench", unit="request") as bar:
        for point in points:
            bar.set_postfix_str(f"{point.mode} x{point.concurrency}")
            records.append(measure(point, bar.update))
    return records


def markdown_table(records: list[dict]) -> str:
    header = "| " + " | ".join(title for _, title in TABLE_COLUMNS) + " |"
    rule = "|" + "---|" * len(TABLE_COLUMNS)
    rows = []
    for record in records:
        cells = ["-" if record[key] is None else str(record[key]) for key, _ in TABLE_COLUMNS]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def run_facts() -> dict:
    """When and with what a run was measured: UTC date and the versions that decide the numbers."""
    import datetime
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("nld", "torch", "onnxruntime", "tensorrt_rtx", "tritonclient", "ai-dynamo", "openai"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {"date": when, "cpus": os.cpu_count(), "versions": versions}


def write_results(out: Path, records: list[dict], context: dict) -> list[Path]:
    """In `out`: bench.json (context, records, crossover), bench.md (the table), crossover.json (when AR
    and linear-spec were both measured), pareto.png and histograms.png."""
    out.mkdir(parents=True, exist_ok=True)
    context = {"host": platform.node(), "machine": platform.machine(), **run_facts(), **context}
    modes = {record["mode"] for record in records}
    crossover = find_crossover(records) if {"ar", SPECULATIVE} <= modes else None
    written = [out / "bench.json", out / "bench.md"]
    written[0].write_text(json.dumps({"context": context, "records": records, "crossover": crossover}, indent=2) + "\n")
    written[1].write_text(markdown_table(records) + "\n")
    if crossover is not None:
        written.append(out / CROSSOVER_FILE)
        written[-1].write_text(json.dumps({**crossover, "context": context}, indent=2) + "\n")
    model = Path(str(context.get("model", "model"))).name
    title = f"{model} on {context.get('device', '?')} ({context.get('backend', '?')})"
    written.append(pareto_chart(records, out / "pareto.png", title))
    written.append(histograms(records, out / "histograms.png", title))
    return written
