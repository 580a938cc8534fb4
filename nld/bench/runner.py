"""Run the benchmark in process: the batching engine over a step backend, `concurrency` closed-loop users
(each sends its next prompt when the last one finished), every streamed chunk timestamped."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from nld.bench.metrics import RequestTrace, summarize
from nld.bench.prompts import BenchPrompt
from nld.engine import Engine, EngineSettings
from nld.engine.scheduler import Update
from nld.modes import GenerationParams
from nld.step import StepBackend


class TimedBackend:
    """A step backend that adds up the seconds spent inside `step` (the network forwards)."""

    def __init__(self, backend: StepBackend) -> None:
        self._backend = backend
        self.seconds = 0.0

    def step(self, requests: list) -> list:
        began = time.perf_counter()
        try:
            return self._backend.step(requests)
        finally:
            self.seconds += time.perf_counter() - began

    def __getattr__(self, name: str) -> object:
        return getattr(self._backend, name)


@dataclass(frozen=True)
class SweepPoint:
    mode: str
    concurrency: int


def run_point(
    backend: StepBackend,
    prompts: list[tuple[BenchPrompt, list[int]]],
    point: SweepPoint,
    max_new_tokens: int,
    warmup: int = 1,
    repeat: int = 1,
    progress: Callable[[int], None] | None = None,
    block_length: int | None = None,
) -> dict:
    """Benchmark one mode at one concurrency; returns its record (metrics.summarize)."""
    timed = TimedBackend(backend)
    engine = Engine(timed, EngineSettings(max_batch=point.concurrency))  # type: ignore[arg-type]
    engine.warm_up()  # compiled backends: every step shape of this point, outside the measurement
    params = GenerationParams(max_new_tokens=max_new_tokens, block_length=block_length if point.mode != "ar" else None)
    _drive(engine, prompts[:warmup], point, params, None)  # compile / allocate outside the measurement
    timed.seconds = 0.0
    forwards_before = engine.metrics["forwards"]
    network_before = getattr(backend, "forward_seconds", None)
    began = time.perf_counter()
    traces = _drive(engine, prompts * repeat, point, params, progress)
    wall = time.perf_counter() - began
    batched = engine.metrics["forwards"] - forwards_before
    record = summarize(point.mode, point.concurrency, traces, wall, timed.seconds, batched)
    if network_before is not None and batched:  # a padded-batch backend times its network forwards
        network = backend.forward_seconds - network_before
        record["host_ms_per_forward"] = round(1000 * (wall - network) / batched, 4)  # everything but the network
    return record


def _drive(
    engine: Engine,
    queue: list[tuple[BenchPrompt, list[int]]],
    point: SweepPoint,
    params: GenerationParams,
    progress: Callable[[int], None] | None,
) -> list[RequestTrace]:
    pending = list(queue)
    traces: list[RequestTrace] = []
    active = 0

    def send() -> None:
        nonlocal active
        prompt, ids = pending.pop(0)
        trace = RequestTrace(prompt.category, time.perf_counter())
        traces.append(trace)
        active += 1

        def listen(update: Update, trace: RequestTrace = trace) -> None:
            nonlocal active
            now = time.perf_counter()
            if update.new_ids:
                trace.chunks.append((now, len(update.new_ids)))
            if update.finished:
                trace.finished = now
                if update.generation is not None:
                    trace.forwards = update.generation.forwards
                    trace.acceptance_lengths = list(update.generation.acceptance_lengths)
                active -= 1
                if progress is not None:
                    progress(1)

        engine.submit(ids, point.mode, params, listen)

    while pending or active:
        while pending and active < point.concurrency:
            send()
        engine.step()
    return traces
