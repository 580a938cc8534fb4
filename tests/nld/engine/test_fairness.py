"""Fair scheduling: an expensive request runs less often, so a cheap one is not stalled by every wide step.

Structural, not timed: it counts forwards. (How long a normal request takes beside each worst case is a
benchmark: scripts/bench_fairness.py, docs/serving.md.)
"""

from __future__ import annotations

import threading
from dataclasses import replace

from nld.engine import Engine, EngineSettings
from nld.engine.scheduler import SHARED_WIDTH, width_bucket
from nld.generate import generate
from nld.limits import BLOCK_LENGTH_CAP
from nld.modes import GenerationParams
from tests.nld.engine.test_scheduler import CASE, Collector, prompts
from tests.nld.helpers import backend_for


def test_width_buckets() -> None:
    assert {width_bucket(w) for w in (1, 8, SHARED_WIDTH)} == {SHARED_WIDTH}
    assert width_bucket(SHARED_WIDTH + 1) == 2 * SHARED_WIDTH
    assert width_bucket(32 * 33) == 2048
    # On a CPU (shared width 1) a narrow step never joins a wider one's forward.
    assert [width_bucket(w, 1) for w in (1, 2, 8, 9, 72)] == [1, 2, 8, 16, 128]


def test_a_cheap_request_outpaces_an_expensive_one_and_both_stay_exact() -> None:
    backend = backend_for(CASE)
    engine = Engine(backend, EngineSettings(max_batch=4, kv_blocks=4096))  # a slot of 16384 positions
    collector = Collector()
    cheap_prompt, wide_prompt = prompts(2, backend.config.vocab_size)
    wide = GenerationParams(max_new_tokens=4000, block_length=BLOCK_LENGTH_CAP["quadratic-spec"])
    cheap = GenerationParams(max_new_tokens=40)
    stop_wide = threading.Event()
    wide_id = engine.submit(wide_prompt, "quadratic-spec", wide, collector.listen, stop_wide.is_set)
    cheap_id = engine.submit(cheap_prompt, "ar", cheap, collector.listen)
    wide_updates_when_cheap_done = None  # every quadratic cycle emits >= 1 token: one update per forward
    for _ in range(100_000):
        if not engine.busy:
            break
        engine.step()
        cheap_updates = collector.updates.get(cheap_id, [])
        if wide_updates_when_cheap_done is None and cheap_updates and cheap_updates[-1].finished:
            wide_updates_when_cheap_done = list(collector.updates.get(wide_id, []))
            stop_wide.set()
    assert not engine.busy
    assert wide_updates_when_cheap_done is not None and not any(u.finished for u in wide_updates_when_cheap_done)
    assert len(wide_updates_when_cheap_done) < 40 / 2  # the cheap request made >= 2 forwards per wide one
    assert collector.final(cheap_id).generation.new_ids == generate(backend, cheap_prompt, "ar", cheap).new_ids  # type: ignore[union-attr]
    streamed = collector.streamed(wide_id)
    assert collector.final(wide_id).generation.finish_reason == "cancelled"  # type: ignore[union-attr]
    alone = generate(backend, wide_prompt, "quadratic-spec", replace(wide, max_new_tokens=len(streamed)))
    assert streamed == alone.new_ids
