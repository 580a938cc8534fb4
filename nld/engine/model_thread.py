"""One thread for a process's model work: loading the backend, warming it up and stepping it.

Why one thread: torch's CPU kernels run on libgomp, which keeps a pool of worker threads per thread that
ever ran a parallel region. A server that loads its model on one thread and steps it on another has two
pools; once libgomp manages more threads than there are cores it stops letting idle workers spin between
parallel regions, and every region of every step then waits for workers to wake. Measured on the 2-core
CPU machine (the built-in model, compiled AR, one user, `research/runtime/model_thread_probe.py`,
docs/bench.md "Serving at one user"): loaded on one thread and stepped on another, 387 tokens/s with the
worker at 1.0 ms of CPU per token (asleep between regions); loaded and stepped on one thread, 612 tokens/s
with the worker at 1.8 ms (spinning): 0.63x. So servers load, build, warm up and step their engine on one
`ModelThread` (`Engine.launch`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThread:
    """A daemon thread that runs the jobs given to it, one at a time, in order."""

    def __init__(self, name: str = "nld-engine") -> None:
        self._jobs: queue.SimpleQueue[tuple[Future, Callable[[], Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Queue `job`; its Future holds what it returns or raises."""
        future: Future[T] = Future()
        self._jobs.put((future, job))
        return future

    def call(self, job: Callable[[], T]) -> T:
        """Run `job` on this thread and wait for it."""
        return self.submit(job).result()

    def close(self, wait: bool = True) -> None:
        """End the thread once the jobs queued so far are done; `wait` for that (a daemon thread: one that
        is not waited for ends with the process)."""
        self._jobs.put(None)
        if wait:
            self._thread.join()

    def _serve(self) -> None:
        while (item := self._jobs.get()) is not None:
            future, job = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as error:  # handed to whoever waits on the future
                future.set_exception(error)
