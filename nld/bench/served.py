"""Run the benchmark against a running server: `concurrency` closed-loop users, each a thread with its own
client streaming its requests (the real client, real streams); every response timestamped.

Two protocols: Triton gRPC (`NLDClient`; forwards and acceptance per response) and the OpenAI HTTP API
(`openai` client, SSE chunks; forwards and acceptance from the workers' Prometheus counters, summed over
the point). The servers' Prometheus endpoints, when given, also give the batched forwards.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
from collections.abc import Callable, Iterator

from nld.bench.metrics import RequestTrace, summarize
from nld.bench.prompts import BenchPrompt
from nld.bench.runner import SweepPoint
from nld.serving.client import NLDClient, read_metrics

# One user's session: opened once per thread, then called per prompt with (prompt, trace) to fill the trace.
Session = Callable[[], contextlib.AbstractContextManager[Callable[[BenchPrompt, RequestTrace], None]]]


def counters(metrics_urls: list[str]) -> dict[str, float] | None:
    """The nld_* samples summed over the endpoints; None when one cannot be read."""
    if not metrics_urls:
        return None
    total: dict[str, float] = {}
    try:
        for url in metrics_urls:
            for key, value in read_metrics(url).items():
                total[key] = total.get(key, 0.0) + value
    except (OSError, urllib.error.URLError):
        return None
    return total


def _delta(before: dict[str, float] | None, after: dict[str, float] | None, key: str) -> float | None:
    if before is None or after is None:
        return None
    return after.get(key, 0.0) - before.get(key, 0.0)


def grpc_session(url: str, point: SweepPoint, max_new_tokens: int, block_length: int | None = None) -> Session:
    """Users of the Triton gRPC endpoint at `url` (host:port)."""

    @contextlib.contextmanager
    def session() -> Iterator[Callable[[BenchPrompt, RequestTrace], None]]:
        with NLDClient(url) as client:

            def run(prompt: BenchPrompt, trace: RequestTrace) -> None:
                def heard(ids: list[int]) -> None:
                    if ids:
                        trace.chunks.append((time.perf_counter(), len(ids)))

                block = block_length if point.mode != "ar" else None
                result = client.generate(
                    prompt.text, on_ids=heard, mode=point.mode, max_tokens=max_new_tokens, block_length=block
                )
                trace.forwards = result.forwards or 0
                trace.acceptance_lengths = list(result.acceptance_lengths)

            yield run

    return session


def openai_session(
    url: str,
    model: str,
    point: SweepPoint,
    max_new_tokens: int,
    count_tokens: Callable[[str], int],
    block_length: int | None = None,
) -> Session:
    """Users of the OpenAI endpoint at `url` (…/v1), model `<model>:<mode>`, greedy streamed completions.
    SSE chunks carry text, not token counts: a chunk's tokens are those its text adds to the re-tokenized
    text so far (`count_tokens`), the last chunk settling the total the usage reports."""

    @contextlib.contextmanager
    def session() -> Iterator[Callable[[BenchPrompt, RequestTrace], None]]:
        import openai

        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        extra = {}
        if block_length is not None and point.mode != "ar":
            extra = {"nvext": {"annotations": [f"block_length={block_length}"]}}
        try:

            def run(prompt: BenchPrompt, trace: RequestTrace) -> None:
                stream = client.completions.create(
                    model=f"{model}:{point.mode}",
                    prompt=prompt.text,
                    max_tokens=max_new_tokens,
                    temperature=0.0,
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body=extra,
                )
                text, counted, usage = "", 0, None
                for chunk in stream:
                    now = time.perf_counter()
                    if chunk.usage is not None:
                        usage = chunk.usage.completion_tokens
                    piece = chunk.choices[0].text if chunk.choices else ""
                    if piece:
                        text += piece
                        tokens = count_tokens(text) - counted
                        if tokens > 0:  # else the piece merged into a token still to come
                            counted += tokens
                            trace.chunks.append((now, tokens))
                if usage is not None and trace.chunks:  # the usage's total: the last chunk absorbs the difference
                    last_time, last_tokens = trace.chunks[-1]
                    trace.chunks[-1] = (last_time, max(last_tokens + usage - counted, 1))

            yield run
        finally:
            client.close()

    return session


def run_point_served(
    session: Session,
    prompts: list[BenchPrompt],
    point: SweepPoint,
    warmup: int = 1,
    repeat: int = 1,
    metrics_urls: list[str] | None = None,
    progress=None,
    per_response_stats: bool = True,
) -> dict:
    """Benchmark one mode at one concurrency through `session`. Without per-response stats (the OpenAI
    path), tokens/forward and acceptance come from the metrics' per-request counters."""
    _drive(session, prompts[:warmup], point, None)
    before = counters(metrics_urls or [])
    began = time.perf_counter()
    traces = _drive(session, prompts * repeat, point, progress)
    wall = time.perf_counter() - began
    after = counters(metrics_urls or [])
    batched = _delta(before, after, "nld_forwards_total")
    record = summarize(point.mode, point.concurrency, traces, wall, None, None if batched is None else int(batched))
    if not per_response_stats:
        forwards = _delta(before, after, "nld_request_forwards_total")
        verifies = _delta(before, after, "nld_verify_steps_total")
        accepted = _delta(before, after, "nld_accepted_tokens_total")
        user_seconds = sum(trace.finished - trace.submitted for trace in traces)
        record["tokens_per_forward"] = round(record["output_tokens"] / forwards, 4) if forwards else None
        record["acceptance_length"] = round(accepted / verifies, 4) if verifies and accepted is not None else None
        record["forwards_per_s_per_user"] = round(forwards / user_seconds, 3) if forwards and user_seconds else None
    return record


def _drive(session: Session, queue: list[BenchPrompt], point: SweepPoint, progress) -> list[RequestTrace]:
    pending = list(queue)
    traces: list[RequestTrace] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def user() -> None:
        try:
            with session() as run:
                while True:
                    with lock:
                        if not pending or errors:
                            return
                        prompt = pending.pop(0)
                    trace = RequestTrace(prompt.category, time.perf_counter())
                    run(prompt, trace)
                    trace.finished = time.perf_counter()
                    with lock:
                        traces.append(trace)
                    if progress is not None:
                        progress(1)
        except Exception as error:  # re-raised in the caller's thread
            with lock:
                errors.append(error)

    threads = [threading.Thread(target=user, name=f"bench-user-{i}") for i in range(point.concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return traces
