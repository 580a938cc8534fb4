"""One failing request in a batched step fails alone: the others finish exactly as they would alone.

A fault is injected into one request by wrapping its mode's real policy (every other request runs the
real policy through the same wrapper untouched): at its third step it either asks for sampling at an
infinite temperature (the sampler fails inside the batched step, as `temperature=inf` once did), feeds a
token id outside the vocabulary (the shared forward itself fails), or raises in the policy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch

from nld.engine import Engine, EngineSettings
from nld.generate import generate
from nld.modes import MODES, GenerationParams
from nld.modes.base import Decoding, Policy
from nld.sampling import Sampler
from nld.step import PartialStepError, StepRequest
from tests.nld.engine.test_scheduler import CASE, Collector
from tests.nld.helpers import backend_for

FAULT_STEP = 3
POISON = 7  # the failing request's prompt starts with this id; the good ones never do


def _fault(kind: str, request: StepRequest, vocab: int) -> StepRequest:
    if kind == "sampling":
        sampler = Sampler(1.0, 1.0, request.sampler.banned_ids)
        sampler.temperature = math.inf  # past validation: what an unchecked temperature did to a batch
        return replace(request, sampler=sampler)
    if kind == "forward":
        return replace(request, token_ids=torch.full_like(request.token_ids, vocab))
    raise RuntimeError("policy fault injected")


def _faulty(real: Callable[[Decoding], Policy], kind: str) -> Callable[[Decoding], Policy]:
    def policy(decoding: Decoding) -> Policy:
        steps = real(decoding)
        poisoned = decoding.state.prompt_ids[0] == POISON
        result = None
        for index in range(10**6):
            try:
                request = next(steps) if result is None else steps.send(result)
            except StopIteration:
                return
            if poisoned and index == FAULT_STEP:
                request = _fault(kind, request, decoding.config.vocab_size)
            result = yield request

    return policy


def _prompt(first: int, length: int, seed: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed)
    return [first, *torch.randint(12, 500, (length - 1,), generator=generator).tolist()]


@pytest.mark.parametrize("kind", ["sampling", "forward", "policy"])
@pytest.mark.parametrize("faulty_mode", list(MODES))
def test_a_failing_request_fails_alone(kind: str, faulty_mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = backend_for(CASE)
    params = GenerationParams(max_new_tokens=20)
    good = [(mode, _prompt(20 + i, 9, seed=i)) for i, mode in enumerate(list(MODES) * 2)]
    expected = {(mode, tuple(prompt)): generate(backend, prompt, mode, params).new_ids for mode, prompt in good}
    monkeypatch.setitem(MODES, faulty_mode, _faulty(MODES[faulty_mode], kind))

    engine = Engine(backend, EngineSettings(max_batch=16))
    collector = Collector()
    bad = engine.submit(_prompt(POISON, 9, seed=99), faulty_mode, params, collector.listen)
    ids = {engine.submit(prompt, mode, params, collector.listen): (mode, tuple(prompt)) for mode, prompt in good}
    for _ in range(10_000):
        if not engine.busy:
            break
        engine.step()
    assert not engine.busy

    failed = collector.final(bad)
    assert failed.error is not None
    assert {"sampling": "probability", "forward": "index", "policy": "policy fault"}[kind] in failed.error
    for request_id, key in ids.items():
        final = collector.final(request_id)
        assert final.error is None, (key[0], final.error)
        assert final.generation is not None and final.generation.new_ids == expected[key], key[0]
        assert collector.streamed(request_id) == expected[key]
    assert engine.pool.free_blocks == engine.pool.total_blocks


def test_the_backend_returns_the_others_results_beside_a_failed_selection() -> None:
    backend = backend_for(CASE)
    tokens = [torch.tensor(_prompt(30 + i, 6, seed=i)) for i in range(3)]

    def request(index: int, sampler: Sampler) -> StepRequest:
        count = tokens[index].shape[0]
        visibility = torch.ones(count, count, dtype=torch.bool).tril()
        return StepRequest(
            backend.new_cache(32), tokens[index], torch.arange(count), visibility, sampler, write_cache=True
        )

    broken = Sampler(1.0, 1.0, (backend.config.mask_token_id,))  # -inf / inf: NaN probabilities
    broken.temperature = math.inf
    batch = [request(0, Sampler()), request(1, broken), request(2, Sampler())]
    with pytest.raises(PartialStepError) as raised:
        backend.step(batch)
    failures = raised.value
    assert set(failures.errors) == {1} and failures.results[1] is None
    assert batch[1].cache.length == 0 and batch[0].cache.length == batch[2].cache.length == 6
    for index in (0, 2):
        solo = backend.step([request(index, Sampler())])[0]
        assert torch.equal(failures.results[index].token_ids, solo.token_ids)  # type: ignore[union-attr]
