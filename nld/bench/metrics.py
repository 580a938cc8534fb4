"""What one benchmark run measured, per request and in total, summarised in SPEED-Bench's conventions
(docs/bench.md): TPF counts every forward, acceptance length is per verify, latencies are percentiles."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class RequestTrace:
    """Timestamps of one request: submission, and each streamed chunk (time, tokens in it)."""

    category: str
    submitted: float
    chunks: list[tuple[float, int]] = field(default_factory=list)
    finished: float = 0.0
    forwards: int = 0
    acceptance_lengths: list[int] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(count for _, count in self.chunks)

    @property
    def ttft(self) -> float:
        return self.chunks[0][0] - self.submitted

    def inter_token_latencies(self) -> list[float]:
        """Per token after the first chunk: the gap to the previous chunk, split over the chunk's tokens."""
        gaps = []
        for (before, _), (now, count) in zip(self.chunks, self.chunks[1:], strict=False):
            gaps += [(now - before) / count] * count
        return gaps


def _percentiles(values: list[float], scale: float) -> dict[str, float | None]:
    if not values:  # e.g. single-chunk requests have no inter-token gaps; JSON gets null, not NaN
        return {name: None for name in ("p50", "p90", "p99")}
    array = np.asarray(values) * scale
    return {f"p{q}": round(float(np.percentile(array, q)), 3) for q in (50, 90, 99)}


def summarize(
    mode: str,
    concurrency: int,
    traces: list[RequestTrace],
    wall: float,
    forward_seconds: float | None,
    batched_forwards: int | None,
) -> dict:
    """One record of the sweep (mode x concurrency). `forward_seconds` (time inside the network forwards)
    and `batched_forwards` are None where they cannot be seen (a remote server without metrics)."""
    tokens = sum(trace.tokens for trace in traces)
    forwards = sum(trace.forwards for trace in traces)
    # Per-user rates over the users' own time (sum of request durations): tokens/s per user is then
    # exactly tokens/forward x forwards/s per user.
    user_seconds = sum(trace.finished - trace.submitted for trace in traces)
    acceptance = [length for trace in traces for length in trace.acceptance_lengths]
    ttft = _percentiles([trace.ttft for trace in traces if trace.chunks], 1000)
    itl = _percentiles([gap for trace in traces for gap in trace.inter_token_latencies()], 1000)
    return {
        "mode": mode,
        "concurrency": concurrency,
        "requests": len(traces),
        "output_tokens": tokens,
        "tokens_per_forward": round(tokens / forwards, 4) if forwards else None,
        "acceptance_length": round(float(np.mean(acceptance)), 4) if acceptance else None,
        "output_tokens_per_s": round(tokens / wall, 2),
        "output_tokens_per_s_per_user": round(tokens / user_seconds, 3) if user_seconds > 0 else None,
        "forwards_per_s_per_user": round(forwards / user_seconds, 3) if user_seconds > 0 else None,
        "batched_forwards_per_s": round(batched_forwards / wall, 2) if batched_forwards is not None else None,
        "ttft_ms_p50": ttft["p50"],
        "ttft_ms_p90": ttft["p90"],
        "ttft_ms_p99": ttft["p99"],
        "itl_ms_p50": itl["p50"],
        "itl_ms_p90": itl["p90"],
        "itl_ms_p99": itl["p99"],
        "runtime_overhead_share": round(1 - forward_seconds / wall, 4) if forward_seconds is not None else None,
        "tokens_per_forward_per_request": [
            round(trace.tokens / trace.forwards, 4) for trace in traces if trace.forwards
        ],
        "acceptance_lengths": acceptance,
        "wall_s": round(wall, 3),
    }
