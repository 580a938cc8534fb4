"""nld bench's charts (PNG, matplotlib's Agg backend): the Pareto chart of total vs per-user throughput
across concurrency for each mode, and the distributions of tokens per forward and acceptance length."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np

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
    """Small multiples, one row per mode (at its lowest measured concurrency, named in the row title):
    tokens per forward of each request, and acceptance length of each verify for the self-speculation
    modes. Every row shares the column's bins and x axis, so rows compare at a glance."""
    first: dict[str, dict] = {}
    for record in sorted(records, key=lambda r: r["concurrency"]):
        first.setdefault(record["mode"], record)
    tpf = [value for record in first.values() for value in record["tokens_per_forward_per_request"]]
    lengths = [value for record in first.values() for value in record["acceptance_lengths"]]
    tpf_bins = np.linspace(min(tpf, default=0.0), max(tpf, default=1.0) + 1e-9, 21)
    length_bins = np.arange(0.5, max(lengths, default=1) + 1.5)
    colors = _colors(records)
    rows = max(1, len(first))
    figure, axes = plt.subplots(rows, 2, figsize=(11, 1.9 * rows + 1), squeeze=False, sharex="col")
    for row, (mode, record) in enumerate(first.items()):
        left, right = axes[row]
        left.hist(record["tokens_per_forward_per_request"], bins=tpf_bins, color=colors[mode])
        left.set_title(f"{mode}, {record['concurrency']} user(s): tokens per forward", fontsize=9, loc="left")
        left.set_ylabel("requests")
        if record["acceptance_lengths"]:
            right.hist(record["acceptance_lengths"], bins=length_bins, color=colors[mode], rwidth=0.85)
            right.set_title(f"{mode}: acceptance length per verify", fontsize=9, loc="left")
            right.set_ylabel("verifies")
        else:
            right.text(0.5, 0.5, f"{mode}: no verify steps", ha="center", va="center", transform=right.transAxes)
            right.set_yticks([])
        for cell in (left, right):
            cell.grid(True, alpha=0.3)
    axes[-1][0].set_xlabel("tokens per forward (per request)")
    axes[-1][1].set_xlabel("acceptance length (tokens per verify)")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
