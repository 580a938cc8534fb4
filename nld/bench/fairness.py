"""Fairness under one expensive request: how much longer a normal request takes while a worst-case but
valid request (the widest steps nld.limits allows, or a prompt that fills the context) runs beside it.

Each scenario times a normal request alone on a running engine, then again while the expensive one is
running (started first, cancelled once the normal one is done). The factor is the ratio of the medians.
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
    """The expensive-but-valid requests: each mode at its widest block, and a prompt that fills the context."""
    long_run = context // 2
    return [
        Load("quadratic-spec, widest block", "quadratic-spec", 16, long_run, BLOCK_LENGTH_CAP["quadratic-spec"]),
        Load("diffusion, widest block", "diffusion", 16, long_run, BLOCK_LENGTH_CAP["diffusion"]),
        Load("linear-spec, widest block", "linear-spec", 16, long_run, BLOCK_LENGTH_CAP["linear-spec"]),
        Load("AR, prompt filling the context", "ar", context - long_run // 4, long_run // 4),
    ]


NORMAL = Load("normal AR request", "ar", 16, 32)


@dataclass
class FairnessRow:
    expensive: str
    solo_seconds: float
    beside_seconds: float
    factor: float
    expensive_tokens: int  # what the expensive request produced meanwhile (it kept running)


def _prompt(tokens: int, vocab: int, offset: int) -> list[int]:
    return [4 + (offset + 7 * i) % (vocab - 4) for i in range(tokens)]


def _params(load: Load) -> GenerationParams:
    return GenerationParams(max_new_tokens=load.max_new_tokens, block_length=load.block_length)


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
            cancel = threading.Event()
            produced = [0]
            ended = threading.Event()

            def listen(update: Update, produced: list[int] = produced, ended: threading.Event = ended) -> None:
                produced[0] += len(update.new_ids)
                if update.finished:
                    ended.set()

            engine.submit(_prompt(load.prompt_tokens, vocab, 50), load.mode, _params(load), listen, cancel.is_set)
            time.sleep(0.5)  # the expensive request is admitted and running
            beside = [_run_normal(engine, vocab, 1 + i) for i in range(repeats)]
            cancel.set()
            ended.wait(600)
            row = FairnessRow(
                load.name,
                statistics.median(solo),
                statistics.median(beside),
                statistics.median(beside) / statistics.median(solo),
                produced[0],
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
        "tokens the expensive one made meanwhile |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.expensive} | {row.solo_seconds:.3f} | {row.beside_seconds:.3f} | {row.factor:.2f} | "
            f"{row.expensive_tokens} |"
        )
    return "\n".join(lines)


def as_json(rows: list[FairnessRow]) -> list[dict]:
    return [asdict(row) for row in rows]
