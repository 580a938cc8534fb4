"""Run the benchmark against a running server: `concurrency` closed-loop users, each a thread with its own
gRPC client streaming its requests (the real client, real streams); every response timestamped. The
server's Prometheus endpoint, when reachable, gives the batched forwards."""

from __future__ import annotations

import threading
import time
import urllib.error

from nld.bench.metrics import RequestTrace, summarize
from nld.bench.prompts import BenchPrompt
from nld.bench.runner import SweepPoint
from nld.serving.client import NLDClient, read_metrics


def _forwards(metrics_url: str | None) -> float | None:
    if metrics_url is None:
        return None
    try:
        return read_metrics(metrics_url).get("nld_forwards_total")
    except (OSError, urllib.error.URLError):
        return None


def run_point_served(
    url: str,
    prompts: list[BenchPrompt],
    point: SweepPoint,
    max_new_tokens: int,
    warmup: int = 1,
    repeat: int = 1,
    metrics_url: str | None = None,
    progress=None,
) -> dict:
    """Benchmark one mode at one concurrency on the server at `url` (host:port, gRPC)."""
    _drive(url, prompts[:warmup], point, max_new_tokens, None)
    before = _forwards(metrics_url)
    began = time.perf_counter()
    traces = _drive(url, prompts * repeat, point, max_new_tokens, progress)
    wall = time.perf_counter() - began
    after = _forwards(metrics_url)
    batched = int(after - before) if before is not None and after is not None else None
    return summarize(point.mode, point.concurrency, traces, wall, None, batched)


def _drive(url: str, queue: list[BenchPrompt], point: SweepPoint, max_new_tokens: int, progress) -> list[RequestTrace]:
    pending = list(queue)
    traces: list[RequestTrace] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def user() -> None:
        with NLDClient(url) as client:
            while True:
                with lock:
                    if not pending or errors:
                        return
                    prompt = pending.pop(0)
                trace = RequestTrace(prompt.category, time.perf_counter())

                def heard(ids: list[int], trace: RequestTrace = trace) -> None:
                    if ids:
                        trace.chunks.append((time.perf_counter(), len(ids)))

                try:
                    result = client.generate(prompt.text, on_ids=heard, mode=point.mode, max_tokens=max_new_tokens)
                except Exception as error:  # re-raised in the caller's thread
                    with lock:
                        errors.append(error)
                    return
                trace.finished = time.perf_counter()
                trace.forwards = result.forwards or 0
                trace.acceptance_lengths = list(result.acceptance_lengths)
                with lock:
                    traces.append(trace)
                if progress is not None:
                    progress(1)

    threads = [threading.Thread(target=user, name=f"bench-user-{i}") for i in range(point.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return traces
