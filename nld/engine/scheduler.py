"""The scheduler: admit requests into the KV pool, batch their pending steps, stream final tokens.

Each request runs its mode's policy (a generator over the step seam). One engine step gathers the
pending StepRequest of every running request and runs them as few forwards as the backend allows
(one per adapter setting), then hands each result back to its policy. Whatever a policy emitted is
final (accepted spans, committed blocks), so it is streamed to the request's listener at once.
A request ends by finishing, failing, or being cancelled; in every case its KV lease goes back.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nld.engine.kv_pool import KVLease, KVPool, PoolExhaustedError
from nld.generate import cache_capacity
from nld.modes import MODES, Decoding, Generation, GenerationParams
from nld.modes.base import Policy
from nld.step import StepBackend, StepRequest

LOG = logging.getLogger("nld.engine")
AUTO = "auto"
SPECULATIVE_MODE = "linear-spec"


@dataclass(frozen=True)
class EngineSettings:
    """max_batch: requests running at once. kv_blocks x kv_block_tokens: the KV pool.
    auto_threshold: mode `auto` speculates while fewer requests than this are running, else runs AR."""

    max_batch: int = 16
    kv_blocks: int = 1024
    kv_block_tokens: int = 16
    auto_threshold: int = 4


class RequestError(ValueError):
    """A request the engine refuses; `field` names the offending parameter."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Update:
    """What a listener hears: tokens that became final since the last update, and the end."""

    request_id: str
    new_ids: list[int]
    finished: bool = False
    generation: Generation | None = None
    error: str | None = None


Listener = Callable[[Update], None]


@dataclass
class _Running:
    request_id: str
    mode: str
    prompt_ids: list[int]
    params: GenerationParams
    listener: Listener
    is_cancelled: Callable[[], bool]
    lease: KVLease | None = None
    decoding: Decoding | None = None
    policy: Policy | None = None
    pending: StepRequest | None = None
    sent: int = 0
    started: float = field(default_factory=time.perf_counter)


class Engine:
    """Batched multi-mode generation over one step backend."""

    def __init__(self, backend: StepBackend, settings: EngineSettings | None = None) -> None:
        self.backend = backend
        self.settings = settings or EngineSettings()
        self.pool = KVPool(backend, self.settings.kv_blocks, self.settings.kv_block_tokens)
        self.metrics: Counter[str] = Counter()
        self._incoming: list[_Running] = []  # guarded by _wake; moved to _waiting by the stepping thread
        self._waiting: deque[_Running] = deque()
        self._running: list[_Running] = []
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False

    # -- submission ---------------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        mode: str,
        params: GenerationParams,
        listener: Listener,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> str:
        """Queue a request; raises RequestError (naming the parameter) for one that can never run."""
        if mode != AUTO and mode not in MODES:
            raise RequestError("mode", f"unknown mode '{mode}': choose one of {', '.join([*MODES, AUTO])}")
        if not prompt_ids:
            raise RequestError("prompt", "the prompt is empty")
        vocab = self.backend.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise RequestError("prompt", f"prompt token ids must lie in [0, {vocab})")
        context = self.backend.config.max_position_embeddings
        if len(prompt_ids) + params.max_new_tokens > context:
            raise RequestError(
                "max_new_tokens",
                f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                f"model's context of {context} tokens",
            )
        request = _Running(f"r{next(self._ids)}", mode, list(prompt_ids), params, listener, is_cancelled)
        candidates = (SPECULATIVE_MODE, "ar") if mode == AUTO else (mode,)
        try:
            self.pool.check_fits(max(self._capacity(request, name) for name in candidates))
        except PoolExhaustedError as error:
            raise RequestError("max_new_tokens", str(error)) from None
        with self._wake:
            self._incoming.append(request)
            self._wake.notify()
        return request.request_id

    def _capacity(self, request: _Running, mode: str) -> int:
        return cache_capacity(len(request.prompt_ids), mode, request.params, self.backend.config.block_size)

    # -- one scheduling round -----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return bool(self._incoming or self._waiting or self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    def step(self) -> None:
        """Drop cancelled requests, admit waiting ones, run every pending step, stream what became final."""
        with self._wake:
            self._waiting.extend(self._incoming)
            self._incoming.clear()
        self._drop_cancelled()
        self._admit()
        groups: dict[bool, list[_Running]] = {}
        for request in self._running:
            assert request.pending is not None
            groups.setdefault(request.pending.adapter, []).append(request)
        for members in groups.values():
            try:
                results = self.backend.step([member.pending for member in members])  # type: ignore[misc]
            except Exception as error:  # the batch fails; the engine keeps serving
                for member in members:
                    self._finish(member, error=f"step failed: {error}")
                continue
            self.metrics["forwards"] += 1
            for member, result in zip(members, results, strict=True):
                self._advance(member, result)

    def _drop_cancelled(self) -> None:
        for request in [*self._waiting, *self._running]:
            if request.is_cancelled():
                if request in self._waiting:
                    self._waiting.remove(request)
                self._finish(request, reason="cancelled")

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.settings.max_batch:
            request = self._waiting[0]
            if request.mode == AUTO:
                request.mode = SPECULATIVE_MODE if len(self._running) < self.settings.auto_threshold else "ar"
            lease = self.pool.try_lease(self._capacity(request, request.mode))
            if lease is None:
                return  # wait for running requests to return KV blocks
            self._waiting.popleft()
            request.lease = lease
            backend = self.backend
            try:
                request.decoding = Decoding(
                    backend.config, request.prompt_ids, request.params, lease.cache, request.mode, backend.has_adapter
                )
            except ValueError as error:
                self._finish(request, error=str(error))
                continue
            request.policy = MODES[request.mode](request.decoding)
            self._running.append(request)
            self.metrics[f"requests_{request.mode}"] += 1
            self._advance(request, None)

    def _advance(self, request: _Running, result: object) -> None:
        assert request.policy is not None and request.decoding is not None
        try:
            request.pending = next(request.policy) if result is None else request.policy.send(result)  # type: ignore[arg-type]
            finished = False
        except StopIteration:
            finished = True
        except Exception as error:  # this request fails; the others go on
            self._finish(request, error=f"{type(error).__name__}: {error}")
            return
        if finished:
            self._finish(request)
            return
        self._stream(request)

    def _stream(self, request: _Running, finished: bool = False, error: str | None = None) -> None:
        new_ids = request.decoding.state.new_ids if request.decoding else []
        delta = new_ids[request.sent :]
        request.sent = len(new_ids)
        self.metrics["tokens"] += len(delta)
        if delta or finished:
            generation = request.decoding.state if request.decoding and finished else None
            try:
                request.listener(Update(request.request_id, delta, finished, generation, error))
            except Exception:  # a listener's failure (a closed stream) must not stop the engine
                LOG.exception("listener of request %s failed", request.request_id)

    def _finish(self, request: _Running, reason: str | None = None, error: str | None = None) -> None:
        if request in self._running:
            self._running.remove(request)
        if request.lease is not None:
            self.pool.release(request.lease)
        if request.policy is not None:
            request.policy.close()
        if request.decoding is not None:
            state = request.decoding.state
            state.finish_reason = reason or ("error" if error else state.finish_reason)
            state.seconds = time.perf_counter() - request.started
            self.metrics["accepted_tokens"] += sum(state.acceptance_lengths)
        self._stream(request, finished=True, error=error)

    # -- background loop ----------------------------------------------------------------------------
    def start(self) -> None:
        """Step in a background thread whenever there is work."""
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="nld-engine", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stop and not self.busy:
                    self._wake.wait()
                if self._stop:
                    return
            try:
                self.step()
            except Exception:  # keep serving; the failure is in the log
                LOG.exception("engine step failed")
