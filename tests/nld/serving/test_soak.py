"""Soak against the real tritonserver: 64 closed-loop gRPC streams in every mode for 60 s, with hostile
requests mixed in; every good answer equals its solo in-process run and the KV pool ends all free."""

from __future__ import annotations

import math
import select
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from nld.errors import NLDError
from nld.generate import generate, load_backend
from nld.limits import BLOCK_LENGTH_CAP
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams
from nld.serving.client import ClientResult, NLDClient
from nld.serving.server import ServerSettings
from nld.tokenizer import NLDTokenizer
from tests.nld.conftest import SERVER_KV_BLOCKS
from tests.nld.helpers import wait_for_idle_pool

pytestmark = [pytest.mark.slow, pytest.mark.server]

STREAMS = 64
SOAK_SECONDS = 60.0
DRAIN_SECONDS = 90.0  # after the soak, every stream must end within this
DEADLINE_SECONDS = 240.0  # the whole test body
CLIENT_TIMEOUT = 120.0  # seconds any one response may take
REQUEST_MODES = (*MODES, "auto")
JOBS = 96  # distinct (prompt, mode, max_tokens) jobs the streams cycle through (more than STREAMS)
FIVE_MB = 5 * 1024 * 1024
CONTEXT_TOKENS = 1024  # the built-in model's max_position_embeddings
DISCONNECT_SCRIPT = """
import sys
from nld.serving.client import NLDClient
NLDClient(sys.argv[1]).generate(sys.argv[2], on_ids=lambda ids: print("streaming", flush=True),
                                timeout=60, mode="ar", max_tokens=128)
print("finished", flush=True)
"""


@dataclass(frozen=True)
class Job:
    """One request: prompt and inputs, and what it must get: a refusal naming the input `refuse`, or else
    a valid output equal to the solo greedy run (a prefix of it when cancelled)."""

    kind: str
    prompt: str | bytes
    mode: str = "ar"
    max_tokens: int = 16
    options: dict[str, Any] = field(default_factory=dict)
    refuse: str | None = None
    cancel_after: int | None = None
    disconnect: bool = False
    within: float | None = None  # the answer (refusal or whole output) must come within this many seconds


@dataclass
class Outcome:
    job: Job
    result: ClientResult | None = None
    error: str | None = None
    seconds: float = 0.0
    ended: float = field(default_factory=time.monotonic)


def good_jobs() -> list[Job]:
    """Short code-like prompts, one per job, cycling through every mode with 8-24 new tokens."""
    stems = ("def f_{}(x):", "class C{}:", "for i_{} in range(", "import os\nx_{} = ")
    return [
        Job("good", stems[i % len(stems)].format(i), REQUEST_MODES[i % len(REQUEST_MODES)], 8 + (i * 7) % 17)
        for i in range(JOBS)
    ]


def refused(kind: str, name: str, mode: str = "ar", **options: Any) -> Job:
    """A hostile request that must be refused naming the input `name`."""
    max_tokens = options.pop("max_tokens", 16)
    return Job(kind, "def h(x):", mode, max_tokens, options, refuse=name)


def hostile_jobs() -> list[Job]:
    """At least one request of each hostile kind."""
    jobs = [
        refused("temperature=inf", "temperature", temperature=math.inf),
        refused("temperature=nan", "temperature", temperature=math.nan),
        Job("temperature=1e-40", "def tiny_t(x):", "linear-spec", options={"temperature": 1e-40}),
        refused("top_p=0", "top_p", top_p=0.0),
        refused("top_p=nan", "top_p", top_p=math.nan),
        refused("threshold=nan", "threshold", "diffusion", threshold=math.nan),
        refused("block_length=2**31-1", "block_length", "diffusion", block_length=2**31 - 1),
        refused("max_tokens=context", "max_tokens", max_tokens=CONTEXT_TOKENS),
        refused("max_tokens=2**31-1", "max_tokens", max_tokens=2**31 - 1),
        Job("5 MB prompt", "x" * FIVE_MB, refuse="text_input", within=10.0),
        Job("invalid UTF-8", b"def h(x):\xff\xfe\xc3", refuse="text_input"),
        Job("cancel mid-stream", "def cancelled(x):", max_tokens=64, cancel_after=2),
        Job("disconnect", "def disconnected(x):", disconnect=True),
    ]
    for mode, cap in BLOCK_LENGTH_CAP.items():
        jobs.append(refused(f"{mode} block_length={cap + 1}", "block_length", mode, block_length=cap + 1))
    for mode in ("quadratic-spec", "diffusion"):  # at the cap: valid, with the widest steps there are
        cap = BLOCK_LENGTH_CAP[mode]
        jobs.append(
            Job(f"{mode} block_length={cap}", f"def wide_{mode[0]}(x):", mode, 8, {"block_length": cap}, within=150.0)
        )
    return jobs


def solo_key(job: Job) -> tuple[str, str, int, int | None]:
    """What identifies a greedy solo run; `auto` resolves to linear-spec or ar, both greedy AR output."""
    mode = "ar" if job.mode == "auto" else job.mode
    return str(job.prompt), mode, job.max_tokens, job.options.get("block_length")


def run_disconnect(url: str, job: Job) -> Outcome:
    """A client process that streams a request, then is killed (SIGKILL) after its first response."""
    began = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", DISCONNECT_SCRIPT, url, str(job.prompt)], stdout=subprocess.PIPE, text=True
    )
    try:
        ready, _, _ = select.select([child.stdout], [], [], CLIENT_TIMEOUT)
        line = child.stdout.readline().strip() if ready else ""  # type: ignore[union-attr]
    finally:
        child.kill()
        child.wait(timeout=30)
    error = None if line in ("streaming", "finished") else f"the client process never streamed (got {line!r})"
    return Outcome(job, ClientResult(finish_reason="disconnected"), error, time.monotonic() - began)


def run_job(client: NLDClient, url: str, job: Job) -> Outcome:
    """Send one job and read its whole stream (or cancel / disconnect it); never raises for a refusal."""
    if job.disconnect:
        return run_disconnect(url, job)
    began = time.monotonic()
    try:
        result = client.generate(
            job.prompt,  # type: ignore[arg-type]  # bytes go out as they are (invalid UTF-8)
            timeout=CLIENT_TIMEOUT,
            cancel_after=job.cancel_after,
            mode=job.mode,
            max_tokens=job.max_tokens,
            **job.options,
        )
    except NLDError as error:
        return Outcome(job, error=str(error), seconds=time.monotonic() - began)
    return Outcome(job, result, seconds=time.monotonic() - began)


def bounded(job: Job, url: str, seconds: float) -> Outcome:
    """run_job in a daemon thread, failing the test if it has not returned within `seconds`: NLDClient's
    timeout alone does not bound a call (after it, stopping the stream still waits for the request)."""
    outcomes: list[Outcome] = []

    def call() -> None:
        with NLDClient(url) as client:
            outcomes.append(run_job(client, url, job))

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    assert outcomes, f"{job.kind}: no answer within {seconds:.0f} s"
    return outcomes[0]


class Soak:
    """STREAMS closed-loop clients; hostile jobs are taken by whichever stream is free when each is due.
    The streams are daemon threads joined with a deadline, so a hung call fails the test instead of hanging it."""

    def __init__(self, url: str, hostile: list[Job]) -> None:
        self.url = url
        self.good = good_jobs()
        spacing = (SOAK_SECONDS - 10.0) / len(hostile)
        self.hostile = deque((2.0 + i * spacing, job) for i, job in enumerate(hostile))
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.sent = 0
        self.start = 0.0

    def next_job(self) -> Job | None:
        with self.lock:
            now = time.monotonic() - self.start
            if now >= SOAK_SECONDS:
                return None
            if self.hostile and self.hostile[0][0] <= now:
                return self.hostile.popleft()[1]
            self.sent += 1
            job = self.good[self.sent % len(self.good)]
            return job if self.sent % 4 else replace(job, options={"stream": False})

    def stream(self) -> None:
        with NLDClient(self.url) as client:
            while (job := self.next_job()) is not None:
                outcome = run_job(client, self.url, job)
                with self.lock:
                    self.outcomes.append(outcome)

    def run(self, drain_until: float) -> list[threading.Thread]:
        """Run every stream for SOAK_SECONDS; returns the streams still alive at `drain_until`."""
        self.start = time.monotonic()
        threads = [threading.Thread(target=self.stream, daemon=True, name=f"soak-{i}") for i in range(STREAMS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(0.0, drain_until - time.monotonic()))
        return [thread for thread in threads if thread.is_alive()]


def check_outcome(outcome: Outcome, expected: list[int], vocab: int) -> str | None:
    """Why `outcome` is wrong, or None."""
    job, result = outcome.job, outcome.result
    if job.within is not None and outcome.seconds > job.within:
        return f"answered after {outcome.seconds:.1f} s (limit {job.within} s)"
    if job.refuse is not None:
        if outcome.error is None or f"input '{job.refuse}'" not in outcome.error:
            return f"expected a refusal naming {job.refuse!r}, got {outcome.error or result}"
        return None
    if outcome.error is not None or result is None:
        return f"error: {outcome.error}"
    if job.disconnect:
        return None
    if any(not 0 <= token < vocab for token in result.output_ids):
        return f"token ids outside the vocabulary: {result.output_ids}"
    if result.finish_reason == "cancelled" and job.cancel_after is not None:
        if result.output_ids != expected[: len(result.output_ids)]:
            return f"cancelled output {result.output_ids} is not a prefix of the solo output {expected}"
        return None
    if result.finish_reason not in ("stop", "length"):
        return f"finish_reason {result.finish_reason!r}"
    if result.output_ids != expected:
        return f"output {result.output_ids} != solo output {expected}"
    return None


@pytest.fixture(scope="module")
def local() -> tuple[Any, NLDTokenizer]:
    return load_backend(str(default_model_dir())), NLDTokenizer.from_dir(default_model_dir())


def test_soak_mixed_modes_with_hostile_requests(tiny_server: ServerSettings, local: tuple[Any, NLDTokenizer]) -> None:
    began = time.monotonic()
    backend, tokenizer = local
    soak = Soak(tiny_server.grpc_url, hostile_jobs() * 2)
    hung = soak.run(drain_until=began + SOAK_SECONDS + DRAIN_SECONDS)
    assert not hung, f"{len(hung)} streams still waiting {DRAIN_SECONDS:.0f} s after the soak"
    assert not soak.hostile, "the soak ended before every hostile request was sent"

    solo: dict[tuple[str, str, int, int | None], list[int]] = {}
    failures = []
    for outcome in soak.outcomes:
        key = solo_key(outcome.job)
        needs_solo = outcome.job.refuse is None and not outcome.job.disconnect and outcome.result is not None
        if needs_solo and key not in solo:
            prompt, mode, max_tokens, block_length = key
            params = GenerationParams(max_tokens, block_length=block_length)
            solo[key] = generate(backend, tokenizer.encode_prompt(prompt), mode, params).new_ids
        problem = check_outcome(outcome, solo.get(key, []), backend.config.vocab_size)
        if problem:
            failures.append(f"{outcome.job.kind} {outcome.job.mode} {str(outcome.job.prompt)[:40]!r}: {problem}")

    good = [o for o in soak.outcomes if o.job.kind == "good"]
    hostile = [o for o in soak.outcomes if o.job.kind != "good"]
    kinds = {o.job.kind for o in hostile}
    in_time = sum(o.ended - soak.start <= SOAK_SECONDS for o in good)
    print(
        f"\nsoak: {len(good)} good requests ({in_time} ended within {SOAK_SECONDS:.0f} s, "
        f"{sum(len(o.result.output_ids) for o in good if o.result)} tokens) and {len(hostile)} hostile "
        f"({len(kinds)} kinds) over {STREAMS} streams; {len(solo)} solo runs; {len(failures)} failures; "
        f"drained {max(o.ended for o in soak.outcomes) - soak.start - SOAK_SECONDS:.1f} s after the soak"
    )
    slowest = {o.job.kind: round(o.seconds, 1) for o in sorted(hostile, key=lambda o: o.seconds)}
    print(f"hostile kinds, slowest answer in seconds: {slowest}")
    assert not failures, "\n".join(failures[:20])
    assert kinds == {job.kind for job in hostile_jobs()}
    assert len(good) >= STREAMS  # at least one good answer per stream on average

    job = Job("after", "def after_the_soak(x):", "quadratic-spec", 16)
    after = bounded(job, tiny_server.grpc_url, CLIENT_TIMEOUT)  # still serving, exactly
    expected = generate(backend, tokenizer.encode_prompt(str(job.prompt)), job.mode, GenerationParams(16)).new_ids
    assert check_outcome(after, expected, backend.config.vocab_size) is None, after
    metrics = wait_for_idle_pool(tiny_server.metrics_url, SERVER_KV_BLOCKS)
    assert metrics["nld_kv_blocks_in_use"] == 0 and metrics["nld_kv_blocks_free"] == SERVER_KV_BLOCKS
    assert time.monotonic() - began < DEADLINE_SECONDS
