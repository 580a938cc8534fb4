"""The scheduler: admit requests into the KV pool, batch their pending steps, stream final tokens.

Each request runs its mode's policy (a generator over the step seam). One engine step gathers the
pending StepRequest of every running request, groups them into forwards (one per adapter setting and
step-width bucket, so a narrow step is never padded to a very wide one), runs the groups that are due,
and hands each result back to its policy. Whatever a policy emitted is final (accepted spans,
committed blocks), so it is streamed to the request's listener at once. A request ends by finishing,
failing, or being cancelled; in every case its KV lease goes back.

Isolation: a request that fails in a step (its sampling, its policy, its cache) fails alone; when a
shared forward itself fails, its members are rerun one by one, so only the request at fault fails.
Fairness (weighted fair queuing by measured time): each request is charged its share of the seconds
of the forwards it took part in, and the groups that would finish first on that clock run first. An
expensive request (a wide quadratic step, a long prefill) therefore runs less often, and the others
keep about an equal share of the engine's time instead of waiting on every wide step.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from tokenizers import Tokenizer

from nld.engine.kv_pool import KVLease, KVPool, PoolExhaustedError
from nld.engine.model_thread import ModelThread
from nld.generate import cache_capacity, device_type
from nld.limits import ParameterError, check_prompt_ids, check_request
from nld.modes import MODES, Decoding, Generation, GenerationParams
from nld.modes.base import Policy
from nld.sampling import TokenLogprob
from nld.step import PartialStepError, StepBackend, StepRequest, StepResult

LOG = logging.getLogger("nld.engine")
AUTO = "auto"
SPECULATIVE_MODE = "linear-spec"
SHARED_WIDTH = 64  # on a GPU, steps up to this many tokens share one forward (a wider step costs about the same)
COST_SMOOTHING = 0.5  # weight of the newest forward in a group's running cost estimate


def width_bucket(tokens: int, shared: int = SHARED_WIDTH) -> int:
    """The forward a step of `tokens` tokens joins: all steps up to `shared` tokens share one, wider steps
    share one with steps of the same power-of-two width. On a CPU, where a forward costs in proportion to
    its tokens, `shared` is 1: a 1-token AR step is never padded to a block's width."""
    return max(shared, 1 << (tokens - 1).bit_length())


@dataclass(frozen=True)
class EngineSettings:
    """max_batch: requests running at once. kv_blocks x kv_block_tokens: the KV pool, preallocated as one
    slot per running request (a request may use kv_blocks x kv_block_tokens / max_batch positions).
    auto_threshold: mode `auto` speculates while fewer requests than this are running, else runs AR."""

    max_batch: int = 16
    kv_blocks: int = 1024
    kv_block_tokens: int = 16
    auto_threshold: int = 4

    def __post_init__(self) -> None:
        if min(self.max_batch, self.kv_blocks, self.kv_block_tokens) < 1:
            raise ValueError(f"max_batch, kv_blocks and kv_block_tokens must be >= 1: {self}")
        if self.kv_blocks < self.max_batch:
            raise ValueError(
                f"kv_blocks ({self.kv_blocks}) must be >= max_batch ({self.max_batch}): each running request "
                "holds a slot of kv_blocks / max_batch blocks"
            )


@dataclass
class Update:
    """What a listener hears: tokens that became final since the last update (their text, when the
    engine has a tokenizer, and their log-probabilities, when asked for), and the end."""

    request_id: str
    new_ids: list[int]
    finished: bool = False
    generation: Generation | None = None
    error: str | None = None
    text: str = ""
    logprobs: list[TokenLogprob] | None = None

    def absorb(self, later: Update) -> None:
        """This update and the `later` one of the same request as one, in place (a front end that sends
        fewer, larger responses): the later one's tokens, text and log-probabilities appended to this one's,
        its request id and end (finished, generation, error) taken."""
        self.request_id = later.request_id
        self.new_ids.extend(later.new_ids)
        self.text += later.text
        if later.logprobs is not None:
            self.logprobs = [] if self.logprobs is None else self.logprobs
            self.logprobs.extend(later.logprobs)
        self.finished, self.generation, self.error = later.finished, later.generation, later.error


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
    sent_text: int = 0
    charged: float = 0.0  # seconds of forwards this request is charged with, on the engine's fairness clock
    started: float = field(default_factory=time.perf_counter)


class Engine:
    """Batched multi-mode generation over one step backend. With the model's `tokenizer`, updates carry
    the output's text and requests may have stop strings; with `wants_text` False, text is decoded only
    for requests with stop strings (a front end that streams ids)."""

    def __init__(
        self,
        backend: StepBackend,
        settings: EngineSettings | None = None,
        tokenizer: Tokenizer | None = None,
        wants_text: bool = True,
    ) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.wants_text = wants_text  # False: a front end that reads ids only (text only for stop strings)
        self.settings = settings or EngineSettings()
        self.pool = KVPool(backend, self.settings.kv_blocks, self.settings.kv_block_tokens, self.settings.max_batch)
        self._shared_width = getattr(backend, "shared_width", SHARED_WIDTH)
        self.device = device_type(backend)  # where defaults differ by device (quadratic-spec's block length)
        self.metrics: Counter[str] = Counter()
        self._incoming: list[_Running] = []  # guarded by _wake; moved to _waiting by the stepping thread
        self._waiting: deque[_Running] = deque()
        self._running: list[_Running] = []
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: ModelThread | None = None  # the thread the background loop steps on
        self._loop_done: Future[None] | None = None
        self._stop = False
        self._clock = 0.0  # the least charge of any running request, as of the last round
        self._costs: dict[tuple[bool, int], float] = {}  # seconds per forward, by group

    def warm_up(self) -> float:
        """Compile every step shape this engine may run now, when its backend compiles steps (instead of
        on first use, which stalls the step that needs it); returns the seconds it took (0: nothing to do)."""
        compiled = getattr(self.backend, "compiled", None)
        if compiled is None:
            return 0.0
        began = time.perf_counter()
        compiled.warm_up(compiled.buckets(self.settings.max_batch, self.backend.has_adapter), self.pool.store)
        return time.perf_counter() - began

    # -- submission ---------------------------------------------------------------------------------
    def submit(
        self,
        prompt_ids: list[int],
        mode: str,
        params: GenerationParams,
        listener: Listener,
        is_cancelled: Callable[[], bool] = lambda: False,
    ) -> str:
        """Queue a request; raises ParameterError (naming the parameter) for one that can never run."""
        if mode != AUTO and mode not in MODES:
            raise ParameterError("mode", f"unknown mode '{mode}': choose one of {', '.join([*MODES, AUTO])}")
        config = self.backend.config
        check_prompt_ids(config, prompt_ids)
        if params.stop and self.tokenizer is None:
            raise ParameterError("stop", "this model has no tokenizer, so stop strings cannot be matched")
        candidates = (SPECULATIVE_MODE, "ar") if mode == AUTO else (mode,)
        for name in candidates:
            check_request(config, name, len(prompt_ids), params)
        request = _Running(f"r{next(self._ids)}", mode, list(prompt_ids), params, listener, is_cancelled)
        try:
            self.pool.check_fits(max(self._capacity(request, name) for name in candidates))
        except PoolExhaustedError as error:
            field = "block_length" if params.block_length is not None else "max_new_tokens"
            raise ParameterError(field, str(error)) from None
        with self._wake:
            self._incoming.append(request)
            self._wake.notify()
        return request.request_id

    def _capacity(self, request: _Running, mode: str) -> int:
        config = self.backend.config
        return cache_capacity(len(request.prompt_ids), mode, request.params, config.block_size, self.device)

    # -- one scheduling round -----------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return bool(self._incoming or self._waiting or self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    def step(self) -> None:
        """Drop cancelled requests, admit waiting ones, run the due forwards, stream what became final."""
        with self._wake:
            self._waiting.extend(self._incoming)
            self._incoming.clear()
        self._drop_cancelled()
        self._admit()
        groups: dict[tuple[bool, int], list[_Running]] = {}
        for request in self._running:
            assert request.pending is not None
            key = (request.pending.adapter, width_bucket(request.pending.token_ids.shape[0], self._shared_width))
            groups.setdefault(key, []).append(request)
        for key, members in self._due(groups).items():
            self._run(key, members)

    def _due(self, groups: dict[tuple[bool, int], list[_Running]]) -> dict[tuple[bool, int], list[_Running]]:
        """The groups to run this round, by virtual finish time: a group's tag is its least-charged
        member's charge plus the share of the group's forward each member will be charged. The groups
        whose tag is within the cheapest share of the smallest tag run (always at least one)."""
        if not groups:
            return {}
        self._clock = min(request.charged for request in self._running)
        shares = {key: self._costs.get(key, 0.0) / len(members) for key, members in groups.items()}
        tags = {key: min(member.charged for member in members) + shares[key] for key, members in groups.items()}
        limit = min(tags.values()) + min(shares.values())
        return {key: members for key, members in groups.items() if tags[key] <= limit}

    def _run(self, key: tuple[bool, int], members: list[_Running]) -> None:
        """One forward for `members`; charge each its share of the time, then advance or fail each alone."""
        began = time.perf_counter()
        outcomes = self._outcomes(members)
        seconds = time.perf_counter() - began
        previous = self._costs.get(key)
        self._costs[key] = seconds if previous is None else previous + COST_SMOOTHING * (seconds - previous)
        for member, outcome in zip(members, outcomes, strict=True):
            member.charged += seconds / len(members)
            if isinstance(outcome, Exception):
                self._finish(member, error=f"step failed: {type(outcome).__name__}: {outcome}")
            else:
                self._advance(member, outcome)

    def _outcomes(self, members: list[_Running]) -> list[StepResult | Exception]:
        """Each member's result or its own error. A shared forward that fails wrote no cache, so its
        members are rerun alone: only the ones at fault fail."""
        try:
            results = self.backend.step([member.pending for member in members])  # type: ignore[misc]
        except PartialStepError as failures:
            self.metrics["forwards"] += 1
            return [failures.errors.get(i) or failures.results[i] for i in range(len(members))]  # type: ignore[misc]
        except Exception as error:
            if len(members) == 1:
                return [error]
            return [outcome for member in members for outcome in self._outcomes([member])]
        self.metrics["forwards"] += 1
        return list(results)

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
            request.charged = min((running.charged for running in self._running), default=self._clock)
            backend = self.backend
            try:
                request.decoding = Decoding(
                    backend.config,
                    request.prompt_ids,
                    request.params,
                    lease.cache,
                    request.mode,
                    backend.has_adapter,
                    self.tokenizer if self.wants_text or request.params.stop else None,
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
        state = request.decoding.state if request.decoding else None
        new_ids = state.new_ids if state else []
        delta = new_ids[request.sent :]
        logprobs = state.logprobs[request.sent :] if state and state.logprobs is not None else None
        text = state.text[request.sent_text :] if state else ""
        request.sent, request.sent_text = len(new_ids), request.sent_text + len(text)
        self.metrics["tokens"] += len(delta)
        if delta or text or finished:
            generation = state if finished else None
            update = Update(request.request_id, delta, finished, generation, error, text, logprobs)
            try:
                request.listener(update)
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
            self.metrics["verify_steps"] += len(state.acceptance_lengths)
            self.metrics["request_forwards"] += state.forwards
        self._stream(request, finished=True, error=error)

    # -- background loop ----------------------------------------------------------------------------
    @classmethod
    def launch(
        cls,
        load: Callable[[], StepBackend],
        settings: EngineSettings | None = None,
        tokenizer: Tokenizer | None = None,
        wants_text: bool = True,
    ) -> tuple[Engine, float]:
        """A server's engine: `load` the backend, build and warm up the engine, and step it in the
        background, all on one new thread (nld/engine/model_thread.py says why); returns the running
        engine and the seconds its warm-up took."""
        thread = ModelThread()
        try:

            def build() -> tuple[Engine, float]:
                engine = cls(load(), settings, tokenizer, wants_text)
                return engine, engine.warm_up()

            engine, compiling = thread.call(build)
        except BaseException:  # a failed load, or Ctrl-C while waiting: do not wait for the job
            thread.close(wait=False)
            raise
        engine.start(thread)
        return engine, compiling

    def start(self, thread: ModelThread | None = None) -> None:
        """Step in the background whenever there is work: on `thread` (the one the backend was loaded
        on, see `launch`) or on a new one; the engine closes it when it stops."""
        if self._thread is None:
            self._stop = False
            self._thread = thread or ModelThread()
            self._loop_done = self._thread.submit(self._loop)

    def stop(self) -> None:
        with self._wake:
            self._stop = True
            self._wake.notify()
        if self._thread is not None:
            thread, done = self._thread, self._loop_done
            self._thread = self._loop_done = None
            thread.close()
            assert done is not None
            done.result()  # an exception that ended the loop, raised here

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
