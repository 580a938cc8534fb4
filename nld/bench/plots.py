"""nld bench's charts (PNG, matplotlib's Agg backend): the Pareto chart of total vs per-user throughput
across concurrency for each mode, and the distributions of tokens per forward and acceptance length."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _colors(records: list[dict]) -> dict[str, str]:
    """One color per mode, the same in every chart (in the order the modes were measured)."""
    return {mode: f"C{index}" for index, mode in enumerate(dict.fromkeys(r["mode"] for r in records))}


def pareto_chart(records: list[dict], path: Path, title: str) -> Path:
    """Per mode, one line through its concurrency levels: per-user tok/s (x) vs total tok/s (y)."""
    figure, axes = plt.subplots(figsize=(7, 5))
    colors = _colors(records)
    for mode in colors:
        points = sorted((r for r in records if r["mode"] == mode), key=lambda r: r["concurrency"])
        xs = [r["output_tokens_per_s_per_user"] for r in points]
        ys = [r["output_tokens_per_s"] for r in points]
        axes.plot(xs, ys, marker="o", label=mode, color=colors[mode])
        for r, x, y in zip(points, xs, ys, strict=True):
            axes.annotate(f"{r['concurrency']}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xlabel("output tokens/s per user")
    axes.set_ylabel("output tokens/s, all users")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(title="mode (labels: concurrency)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def histograms(records: list[dict], path: Path, title: str) -> Path:
    """Per mode (concurrency 1 where measured, else the lowest): tokens per forward of each request, and
    acceptance length of each verify for the self-speculation modes."""
    first = {}
    for record in sorted(records, key=lambda r: r["concurrency"]):
        first.setdefault(record["mode"], record)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    colors = _colors(records)
    for mode, record in first.items():
        left.hist(record["tokens_per_forward_per_request"], bins=20, alpha=0.5, label=mode, color=colors[mode])
        if record["acceptance_lengths"]:
            lengths = record["acceptance_lengths"]
            bins = range(1, max(lengths) + 2)
            right.hist(lengths, bins=bins, alpha=0.5, label=mode, align="left", color=colors[mode])
    left.set_xlabel("tokens per forward (per request)")
    left.set_ylabel("requests")
    right.set_xlabel("acceptance length (per verify)")
    right.set_ylabel("verifies")
    for axes in (left, right):
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
