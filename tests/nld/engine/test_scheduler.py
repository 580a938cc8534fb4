"""The engine: batched mixed-mode requests equal one-at-a-time generation; streaming, cancel, KV pool, errors."""

from __future__ import annotations

import threading

import pytest
import torch

from nld.engine import Engine, EngineSettings, Update
from nld.generate import generate
from nld.limits import ParameterError
from nld.modes import MODES, GenerationParams
from tests.nld.helpers import backend_for

CASE = "tiny_b8_spec_lora"  # has the draft adapter, so steps with and without it share a round


def prompts(count: int, vocab: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(3)
    return [torch.randint(4, vocab, (5 + 3 * i,), generator=generator).tolist() for i in range(count)]


class Collector:
    """A listener that keeps every update of every request."""

    def __init__(self) -> None:
        self.updates: dict[str, list[Update]] = {}

    def listen(self, update: Update) -> None:
        self.updates.setdefault(update.request_id, []).append(update)

    def streamed(self, request_id: str) -> list[int]:
        return [token for update in self.updates[request_id] for token in update.new_ids]

    def final(self, request_id: str) -> Update:
        last = self.updates[request_id][-1]
        assert last.finished
        return last


def test_sixteen_mixed_requests_batch_and_match_single_generation() -> None:
    backend = backend_for(CASE)
    engine = Engine(backend, EngineSettings(max_batch=16))
    initial_free = engine.pool.free_blocks
    collector = Collector()
    modes = list(MODES) * 4
    requests = []
    for prompt, mode in zip(prompts(16, backend.config.vocab_size), modes, strict=True):
        params = GenerationParams(max_new_tokens=24)
        request_id = engine.submit(prompt, mode, params, collector.listen)
        requests.append((request_id, prompt, mode, params))
    rounds = 0
    while engine.busy:
        engine.step()
        rounds += 1
    solo_forwards = 0
    for request_id, prompt, mode, params in requests:
        expected = generate(backend, prompt, mode, params)
        final = collector.final(request_id)
        assert final.error is None
        assert final.generation is not None and final.generation.new_ids == expected.new_ids, mode
        assert collector.streamed(request_id) == expected.new_ids  # the stream adds up to the answer
        solo_forwards += expected.forwards
    assert rounds < solo_forwards / 4  # steps of different requests really shared forwards
    assert engine.pool.free_blocks == initial_free == engine.pool.total_blocks


def test_streamed_tokens_arrive_before_the_end() -> None:
    backend = backend_for(CASE)
    engine = Engine(backend)
    collector = Collector()
    request_id = engine.submit(prompts(1, backend.config.vocab_size)[0], "ar", GenerationParams(16), collector.listen)
    while engine.busy:
        engine.step()
    updates = collector.updates[request_id]
    assert len(updates) >= 16 and all(len(u.new_ids) == 1 for u in updates[:-1])


def test_cancel_stops_within_one_step_and_frees_kv() -> None:
    backend = backend_for(CASE)
    engine = Engine(backend)
    collector = Collector()
    cancel = threading.Event()
    request_id = engine.submit(
        prompts(1, backend.config.vocab_size)[0], "linear-spec", GenerationParams(64), collector.listen, cancel.is_set
    )
    engine.step()
    engine.step()
    assert engine.pool.used_blocks > 0
    cancel.set()
    engine.step()
    final = collector.final(request_id)
    assert final.generation is not None and final.generation.finish_reason == "cancelled"
    assert len(final.generation.new_ids) < 64
    assert not engine.busy and engine.pool.used_blocks == 0


def test_requests_wait_for_kv_blocks_and_all_finish() -> None:
    backend = backend_for(CASE)
    engine = Engine(backend, EngineSettings(max_batch=2, kv_blocks=12, kv_block_tokens=16))  # two slots
    collector = Collector()
    ids = [engine.submit(p, "ar", GenerationParams(40), collector.listen) for p in prompts(3, 64)]
    engine.step()
    assert engine.running == 2 and engine.pool.free_blocks == 0
    while engine.busy:
        engine.step()
    assert all(len(collector.final(i).generation.new_ids) == 40 for i in ids)  # type: ignore[union-attr]
    assert engine.pool.used_blocks == 0


def test_auto_speculates_when_idle_and_runs_ar_under_load() -> None:
    backend = backend_for(CASE)
    engine = Engine(backend, EngineSettings(auto_threshold=1))
    collector = Collector()
    ids = [engine.submit(p, "auto", GenerationParams(8), collector.listen) for p in prompts(2, 64)]
    while engine.busy:
        engine.step()
    assert [collector.final(i).generation.mode for i in ids] == ["linear-spec", "ar"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("prompt", "mode", "params", "field"),
    [
        ([], "ar", GenerationParams(), "prompt"),
        ([5, 6], "beam", GenerationParams(), "mode"),
        ([5, 6], "ar", GenerationParams(max_new_tokens=10**6), "max_new_tokens"),
        ([5, 10**7], "ar", GenerationParams(), "prompt"),
    ],
)
def test_bad_requests_name_the_parameter(prompt: list[int], mode: str, params: GenerationParams, field: str) -> None:
    engine = Engine(backend_for(CASE))
    with pytest.raises(ParameterError) as raised:
        engine.submit(prompt, mode, params, lambda update: None)
    assert raised.value.field == field and not engine.busy


def test_a_request_larger_than_the_pool_is_refused() -> None:
    engine = Engine(backend_for(CASE), EngineSettings(max_batch=2, kv_blocks=4, kv_block_tokens=16))
    with pytest.raises(ParameterError, match="has room for 32") as raised:
        engine.submit([5, 6, 7], "ar", GenerationParams(64), lambda update: None)
    assert raised.value.field == "max_new_tokens"


def test_background_thread_serves_submissions() -> None:
    backend = backend_for(CASE)
    engine = Engine(backend)
    engine.start()
    try:
        done = threading.Event()
        box: list[Update] = []

        def listen(update: Update) -> None:
            if update.finished:
                box.append(update)
                done.set()

        prompt = prompts(1, backend.config.vocab_size)[0]
        engine.submit(prompt, "diffusion", GenerationParams(16), listen)
        assert done.wait(60)
        assert box[0].generation.new_ids == generate(backend, prompt, "diffusion", GenerationParams(16)).new_ids  # type: ignore[union-attr]
    finally:
        engine.stop()


def test_running_requests_keep_their_caches_at_the_front_of_the_store_and_steps_read_them_in_place() -> None:
    backend = backend_for(CASE)
    engine = Engine(backend, EngineSettings(max_batch=4, kv_blocks=64))
    collector = Collector()
    lengths = [6, 30, 12, 9, 20, 7]  # requests end at different times: slots free up in the middle
    params = [GenerationParams(max_new_tokens=n) for n in lengths]
    gathered = backend.gathered_steps
    ids = [engine.submit(p, "ar", q, collector.listen) for p, q in zip(prompts(6, 64), params, strict=True)]
    while engine.busy:
        engine.step()
        slots = sorted(request.lease.cache.slot for request in engine._running)  # type: ignore[union-attr]
        assert slots == list(range(len(slots)))  # compacted after every end
    assert backend.gathered_steps == gathered  # every batched AR step read its caches as one view
    for request_id, prompt, param in zip(ids, prompts(6, 64), params, strict=True):
        assert collector.final(request_id).generation.new_ids == generate(backend, prompt, "ar", param).new_ids  # type: ignore[union-attr]
    assert engine.pool.free_blocks == engine.pool.total_blocks


def test_engine_settings_that_leave_a_running_request_no_room_are_refused() -> None:
    with pytest.raises(ValueError, match=r"kv_blocks \(8\) must be >= max_batch \(16\)"):
        EngineSettings(max_batch=16, kv_blocks=8)
