"""Fairness under one expensive request: how much longer a normal request takes while a worst-case but
valid request (the widest steps nld.limits allows, or a prompt that fills the context) runs beside it.

Each scenario times a normal request alone on a running engine, then again while an expensive user
runs beside it (its request started first, with no EOS, and sent again whenever it ends, until the
normal ones are done). The factor is the ratio of the medians.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from nld.engine import Engine, EngineSettings, Update
from nld.limits import BLOCK_LENGTH_CAP
from nld.modes import GenerationParams
from nld.step import StepBackend


@dataclass(frozen=True)
class Load:
    """A request shape: mode, prompt length in tokens, new tokens, block length."""

    name: str
    mode: str
    prompt_tokens: int
    max_new_tokens: int
    block_length: int | None = None


def worst_cases(context: int) -> list[Load]:
    """The expensive-but-valid requests: each mode at its widest block, and prompts that fill the context
    (a user sending them one after another, so a long prefill is always coming)."""
    long_run = context // 2
    return [
        Load("quadratic-spec, widest block", "quadratic-spec", 16, long_run, BLOCK_LENGTH_CAP["quadratic-spec"]),
        Load("diffusion, widest block", "diffusion", 16, long_run, BLOCK_LENGTH_CAP["diffusion"]),
        Load("linear-spec, widest block", "linear-spec", 16, long_run, BLOCK_LENGTH_CAP["linear-spec"]),
        Load("AR, prompts filling the context", "ar", context - 8, 8),
    ]


NORMAL = Load("normal AR request", "ar", 16, 32)


@dataclass
class FairnessRow:
    expensive: str
    solo_seconds: float
    beside_seconds: float
    factor: float
    expensive_tokens: int  # what the expensive user's requests produced meanwhile
    expensive_requests: int  # how many it sent: each is resent as soon as it ends, until the normal ones are done


def _prompt(tokens: int, vocab: int, offset: int) -> list[int]:
    return [4 + (offset + 7 * i) % (vocab - 4) for i in range(tokens)]


def _params(load: Load, stop_at_eos: bool = True) -> GenerationParams:
    eos = None if stop_at_eos else ()
    return GenerationParams(max_new_tokens=load.max_new_tokens, block_length=load.block_length, eos_token_ids=eos)


def _run_normal(engine: Engine, vocab: int, offset: int) -> float:
    done = threading.Event()
    began = time.perf_counter()

    def listen(update: Update) -> None:
        if update.finished:
            if update.error:
                raise RuntimeError(update.error)
            done.set()

    engine.submit(_prompt(NORMAL.prompt_tokens, vocab, offset), NORMAL.mode, _params(NORMAL), listen)
    if not done.wait(600):
        raise TimeoutError("the normal request did not finish within 600 s")
    return time.perf_counter() - began


class _ExpensiveUser:
    """A closed-loop user of `load`: its request is sent again as soon as it ends, until `stop`."""

    def __init__(self, engine: Engine, load: Load, prompt: list[int]) -> None:
        self.engine, self.load, self.prompt = engine, load, prompt
        self.cancel = threading.Event()
        self.tokens = self.requests = 0
        self._send()

    def _send(self) -> None:
        self.requests += 1
        params = _params(self.load, stop_at_eos=False)
        self.engine.submit(self.prompt, self.load.mode, params, self._listen, self.cancel.is_set)

    def _listen(self, update: Update) -> None:
        self.tokens += len(update.new_ids)
        if update.finished and not self.cancel.is_set():
            self._send()

    def stop(self) -> None:
        self.cancel.set()


def measure(
    backend: StepBackend,
    loads: list[Load],
    repeats: int = 3,
    progress: Callable[[str], None] | None = None,
) -> list[FairnessRow]:
    """For each expensive load: the normal request's median time alone and beside it, on one engine."""
    engine = Engine(backend, EngineSettings(max_batch=16, kv_blocks=8192))
    vocab = backend.config.vocab_size
    engine.start()
    rows = []
    try:
        _run_normal(engine, vocab, 0)  # warm-up
        for load in loads:
            solo = [_run_normal(engine, vocab, 1 + i) for i in range(repeats)]
            user = _ExpensiveUser(engine, load, _prompt(load.prompt_tokens, vocab, 50))
            time.sleep(0.5)  # the expensive request is admitted and running
            beside = [_run_normal(engine, vocab, 1 + i) for i in range(repeats)]
            user.stop()
            while engine.busy:
                time.sleep(0.01)
            median_solo, median_beside = statistics.median(solo), statistics.median(beside)
            row = FairnessRow(
                load.name, median_solo, median_beside, median_beside / median_solo, user.tokens, user.requests
            )
            rows.append(row)
            if progress:
                progress(f"{load.name}: {row.factor:.2f}x")
    finally:
        engine.stop()
    return rows


def markdown(rows: list[FairnessRow]) -> str:
    """The rows as a Markdown table."""
    lines = [
        f"| expensive request running beside it | {NORMAL.name} alone (s) | beside it (s) | factor | "
        "the expensive user's tokens (requests) meanwhile |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.expensive} | {row.solo_seconds:.3f} | {row.beside_seconds:.3f} | {row.factor:.2f} | "
            f"{row.expensive_tokens} ({row.expensive_requests}) |"
        )
    return "\n".join(lines)


def as_json(rows: list[FairnessRow]) -> list[dict]:
    return [asdict(row) for row in rows]
