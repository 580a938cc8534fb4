"""One thread for a server's model work: ModelThread runs jobs in order on one thread; Engine.launch loads,
warms up and steps the engine on it."""

from __future__ import annotations

import threading

import pytest

from nld.engine import Engine, EngineSettings, Update
from nld.engine.model_thread import ModelThread
from nld.generate import generate
from nld.modes import GenerationParams
from nld.step import StepBackend
from tests.nld.engine.test_scheduler import CASE, prompts
from tests.nld.helpers import backend_for


def test_jobs_run_in_order_on_one_thread_and_failures_reach_the_caller() -> None:
    thread = ModelThread(name="nld-test")
    seen: list[tuple[int, threading.Thread]] = []
    futures = [thread.submit(lambda i=i: seen.append((i, threading.current_thread())) or i) for i in range(5)]
    assert [future.result(10) for future in futures] == list(range(5))
    assert [i for i, _ in seen] == list(range(5))
    assert len({worker for _, worker in seen}) == 1 and seen[0][1] is not threading.current_thread()
    assert seen[0][1].name == "nld-test" and seen[0][1].daemon

    def fail() -> None:
        raise ValueError("bad job")

    with pytest.raises(ValueError, match="bad job"):
        thread.call(fail)
    assert thread.call(lambda: 7) == 7  # a failed job does not end the thread
    thread.close()
    assert not seen[0][1].is_alive()


def test_launch_loads_and_steps_on_the_same_thread_and_stop_ends_it() -> None:
    threads: dict[str, threading.Thread] = {}

    def load() -> StepBackend:
        threads["load"] = threading.current_thread()
        return backend_for(CASE)

    engine, compiling = Engine.launch(load, EngineSettings(max_batch=2))
    assert compiling == 0.0  # an eager backend: nothing to compile
    try:
        done = threading.Event()
        final: list[Update] = []

        def listen(update: Update) -> None:
            threads["step"] = threading.current_thread()
            if update.finished:
                final.append(update)
                done.set()

        prompt = prompts(1, engine.backend.config.vocab_size)[0]
        engine.submit(prompt, "linear-spec", GenerationParams(12), listen)
        assert done.wait(60)
        expected = generate(engine.backend, prompt, "linear-spec", GenerationParams(12)).new_ids
        assert final[0].generation is not None and final[0].generation.new_ids == expected
        assert threads["step"] is threads["load"] and threads["load"] is not threading.current_thread()
    finally:
        engine.stop()
    assert not threads["load"].is_alive()


def test_a_failing_load_reaches_the_caller() -> None:
    def load() -> StepBackend:
        raise FileNotFoundError("no such checkpoint: /nowhere")

    with pytest.raises(FileNotFoundError, match="/nowhere"):
        Engine.launch(load)
