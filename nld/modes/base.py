"""What every decoding policy shares: parameters, per-request state, and the driver loop.

A policy is a generator: it yields a StepRequest, receives that step's StepResult, and records final
tokens with `Decoding.emit`. It never touches a device or a model, only the step seam, so the same
policy runs on every backend and a scheduler can interleave the steps of many policies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import torch

from nld.config import NLDConfig
from nld.kv_cache import KVCache
from nld.limits import BOUNDS, check_fields, check_prompt_ids
from nld.sampling import Sampler, seeded_generator
from nld.step import StepBackend, StepRequest, StepResult, step_one

Policy = Generator[StepRequest, StepResult, None]


@dataclass
class GenerationParams:
    """Per-request decoding settings. `reference_semantics` restores the released code's behaviour
    exactly: the mask id may be emitted, and linear self-speculation keeps every token accepted in its
    last cycle even past `max_new_tokens`."""

    max_new_tokens: int = 128
    block_length: int | None = None
    threshold: float | None = None
    causal_context: bool = True
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    eos_token_ids: tuple[int, ...] | None = None
    use_adapter: bool = True
    adapter_in_every_pass: bool = False
    reference_semantics: bool = False

    def __post_init__(self) -> None:
        """Every field within its bounds (nld.limits), or a ParameterError naming the field."""
        check_fields({name: getattr(self, name) for name in BOUNDS}, self.eos_token_ids)


@dataclass
class Generation:
    """The result of one request. `nfe` counts forwards as the released code does for the mode;
    `forwards` counts the decode forwards behind `tokens_per_forward` (see docs/decoding.md)."""

    mode: str
    prompt_ids: list[int]
    new_ids: list[int] = field(default_factory=list)
    nfe: int = 0
    forwards: int = 0
    acceptance_lengths: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    seconds: float = 0.0

    @property
    def tokens_per_forward(self) -> float:
        return len(self.new_ids) / self.forwards if self.forwards else 0.0

    @property
    def mean_acceptance_length(self) -> float | None:
        if not self.acceptance_lengths:
            return None
        return sum(self.acceptance_lengths) / len(self.acceptance_lengths)


class Decoding:
    """A policy's view of one request: settings, its KV cache, and helpers to build steps and emit."""

    def __init__(
        self,
        config: NLDConfig,
        prompt_ids: list[int],
        params: GenerationParams,
        cache: KVCache,
        mode: str,
        has_adapter: bool,
    ) -> None:
        check_prompt_ids(config, prompt_ids)
        self.config = config
        self.params = params
        self.cache = cache
        self.mask_id = config.mask_token_id
        self.eos_ids = frozenset(config.eos_token_ids if params.eos_token_ids is None else params.eos_token_ids)
        banned = () if params.reference_semantics else (config.mask_token_id,)
        generator = seeded_generator(params.seed)
        self.sampler = Sampler(params.temperature, params.top_p, banned, generator, params.top_k, params.min_p)
        self.has_adapter = has_adapter
        self.state = Generation(mode=mode, prompt_ids=list(prompt_ids))

    @property
    def prompt(self) -> torch.Tensor:
        return torch.tensor(self.state.prompt_ids, dtype=torch.long)

    def block_length(self, default: int | None = None) -> int:
        return self.params.block_length or default or self.config.block_size

    def positions(self, count: int, start: int | None = None) -> torch.Tensor:
        """Positions of `count` tokens placed right after the committed cache (or at `start`)."""
        first = self.cache.length if start is None else start
        return torch.arange(first, first + count, dtype=torch.long)

    def request(
        self,
        token_ids: torch.Tensor,
        visibility: torch.Tensor,
        *,
        write_cache: bool,
        draft: bool = False,
        positions: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        sampler: Sampler | None = None,
    ) -> StepRequest:
        """A step over `token_ids` placed after the cache. `draft` marks passes where the adapter applies."""
        adapter = self.has_adapter and self.params.use_adapter and (draft or self.params.adapter_in_every_pass)
        return StepRequest(
            cache=self.cache,
            token_ids=token_ids,
            positions=self.positions(token_ids.shape[0]) if positions is None else positions,
            visibility=visibility,
            sampler=sampler or self.sampler,
            write_cache=write_cache,
            adapter=adapter,
            rows=rows,
        )

    def is_eos(self, token: int) -> bool:
        return token in self.eos_ids

    def emit(self, tokens: list[int]) -> bool:
        """Record final tokens; stop after the first EOS or at max_new_tokens. Returns True when done."""
        new = self.state.new_ids
        for offset, token in enumerate(tokens):
            if self.is_eos(token):
                new.extend(tokens[: offset + 1])
                self.state.finish_reason = "stop"
                return True
        new.extend(tokens)
        limit = self.params.max_new_tokens
        if len(new) >= limit:
            if not self.params.reference_semantics:
                del new[limit:]
            self.state.finish_reason = "length"
            return True
        return False

    def emit_verified(self, tokens: list[int]) -> bool:
        """`emit` for the tokens one verify accepted, recording its acceptance length: the tokens it
        emitted (fewer when EOS or max_new_tokens cut it; with reference semantics, all it accepted, as
        the released code counts them)."""
        before = len(self.state.new_ids)
        done = self.emit(tokens)
        emitted = len(self.state.new_ids) - before
        self.state.acceptance_lengths.append(len(tokens) if self.params.reference_semantics else emitted)
        return done


PolicyFactory = Callable[[Decoding], Policy]


def run_policy(
    backend: StepBackend,
    decoding: Decoding,
    policy: PolicyFactory,
    on_tokens: Callable[[list[int]], None] | None = None,
) -> Generation:
    """Drive one policy to completion on `backend`, one step at a time; `on_tokens` hears the ids that
    became final after each step (as the engine streams them)."""
    started = time.perf_counter()
    steps = policy(decoding)
    sent = 0

    def report() -> None:
        nonlocal sent
        new_ids = decoding.state.new_ids
        if on_tokens is not None and len(new_ids) > sent:
            on_tokens(list(new_ids[sent:]))
            sent = len(new_ids)

    try:
        request = next(steps)
        while True:
            request = steps.send(step_one(backend, request))
            report()
    except StopIteration:
        pass
    report()
    decoding.state.seconds = time.perf_counter() - started
    return decoding.state
