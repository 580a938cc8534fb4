"""Responses leave on their own thread, at most one per request per stream interval (the Triton model's
responses; the Dynamo worker's updates to its event loop).

The engine's thread hands a request's updates to an `Outbox` and goes on stepping; a sending thread
sends them. Triton's Python backend sends a response through its parent process and waits for the
parent to take it, so sending on the engine's thread made every step wait for tritonserver to be
scheduled. Updates of one request that arrive within `interval` seconds of its last response, or while
the sender is busy, go out together as one response (`Update.absorb`): every response costs the stub,
tritonserver, gRPC and the client CPU time that the engine's threads would otherwise have, whatever its
size. A request's first response and its last are never held back. In the Dynamo worker every update
handed to the event loop wakes its thread, which then contends for the GIL with the engine's.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from nld.engine import Update

LOG = logging.getLogger("nld.serving")
Key = TypeVar("Key", bound=Hashable)


class Outbox(Generic[Key]):
    """Per-request pending updates and one thread that sends them with `send(key, update)`."""

    def __init__(self, send: Callable[[Key, Update], None], interval: float = 0.0, name: str = "nld-sender") -> None:
        self._send = send
        self.interval = interval
        self._wake = threading.Condition()
        self._pending: dict[Key, Update] = {}  # guarded by _wake, as are the next three
        self._due_at: dict[Key, float] = {}  # keys with a send scheduled, and when
        self._sent_at: dict[Key, float] = {}  # requests with a response out, and when the last went
        self._schedule: list[tuple[float, int, Key]] = []  # a heap; entries whose time moved are stale
        self._order = itertools.count()  # ties in the heap, without comparing keys
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def put(self, key: Key, update: Update) -> None:
        """Add `update` to what `key` has pending (the outbox takes it: the request's later updates are
        appended to it in place): it goes out once the request's interval has passed since its last
        response, or at once when it is the request's last (finished or failed)."""
        now = time.monotonic()
        last = _last(update)
        with self._wake:
            earlier = self._pending.get(key)
            if earlier is None:
                self._pending[key] = update  # the outbox's now: later updates of the request join it in place
            else:
                earlier.absorb(update)
            when = now if last else self._sent_at.get(key, -math.inf) + self.interval
            if when < self._due_at.get(key, math.inf):
                self._due_at[key] = when
                heapq.heappush(self._schedule, (when, next(self._order), key))
                self._wake.notify()

    def close(self) -> None:
        """Send what is scheduled, then end the thread."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()

    def _next(self) -> tuple[Key, Update] | None:
        """Wait for the next key whose time has come; None when closing with nothing scheduled."""
        with self._wake:
            while True:
                while self._schedule and self._due_at.get(self._schedule[0][2]) != self._schedule[0][0]:
                    heapq.heappop(self._schedule)  # stale: rescheduled sooner, or already sent
                if self._schedule:
                    when, _, key = self._schedule[0]
                    now = time.monotonic()
                    if when <= now or self._closing:
                        heapq.heappop(self._schedule)
                        del self._due_at[key]
                        update = self._pending.pop(key)
                        if _last(update):
                            self._sent_at.pop(key, None)
                        else:
                            self._sent_at[key] = now
                        return key, update
                    self._wake.wait(when - now)
                elif self._closing:
                    return None
                else:
                    self._wake.wait()

    def _serve(self) -> None:
        while (item := self._next()) is not None:
            key, update = item
            try:
                self._send(key, update)
            except Exception:  # one closed stream must not stop the others' responses
                LOG.exception("sending a response of request %s failed", update.request_id)


def _last(update: Update) -> bool:
    return update.finished or update.error is not None
