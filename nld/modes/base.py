"""What every decoding policy shares: parameters, per-request state, and the driver loop.

A policy is a generator: it yields a StepRequest, receives that step's StepResult, and records final
tokens with `Decoding.emit`. It never touches a device or a model, only the step seam, so the same
policy runs on every backend and a scheduler can interleave the steps of many policies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

import torch
from tokenizers import Tokenizer

from nld.config import NLDConfig
from nld.kv_cache import KVCache
from nld.limits import BOUNDS, ParameterError, check_fields, check_prompt_ids
from nld.penalties import Penalties, PenaltyHistory, SeenTokens
from nld.sampling import Sampler, TokenLogprob, seeded_generator
from nld.step import StepBackend, StepRequest, StepResult, step_one
from nld.text import OutputText

Policy = Generator[StepRequest, StepResult, None]


@dataclass
class GenerationParams:
    """Per-request decoding settings. `reference_semantics` restores the released code's behaviour
    exactly: the mask id may be emitted, and linear self-speculation keeps every token accepted in its
    last cycle even past `max_new_tokens`. `stop` strings need a tokenizer (see `Decoding`);
    `logprobs` n returns each emitted token's log-probability and the top n (docs/sampling.md)."""

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
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Every field within its bounds (nld.limits), or a ParameterError naming the field."""
        check_fields({name: getattr(self, name) for name in BOUNDS}, self.eos_token_ids, self.stop)
        self.stop = tuple(self.stop)

    @property
    def penalties(self) -> Penalties:
        return Penalties(self.repetition_penalty, self.presence_penalty, self.frequency_penalty)


@dataclass
class Generation:
    """The result of one request. `nfe` counts forwards as the released code does for the mode;
    `forwards` counts the decode forwards behind `tokens_per_forward` (see docs/decoding.md). `text` is
    the output's text when decoding had a tokenizer (cut before a stop string); `logprobs`, one per
    new id, when they were asked for."""

    mode: str
    prompt_ids: list[int]
    new_ids: list[int] = field(default_factory=list)
    nfe: int = 0
    forwards: int = 0
    acceptance_lengths: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    seconds: float = 0.0
    text: str = ""
    logprobs: list[TokenLogprob] | None = None

    @property
    def tokens_per_forward(self) -> float:
        return len(self.new_ids) / self.forwards if self.forwards else 0.0

    @property
    def mean_acceptance_length(self) -> float | None:
        if not self.acceptance_lengths:
            return None
        return sum(self.acceptance_lengths) / len(self.acceptance_lengths)


class Decoding:
    """A policy's view of one request: settings, its KV cache, and helpers to build steps and emit.
    With a `tokenizer` it also keeps the output's text, which stop strings need."""

    def __init__(
        self,
        config: NLDConfig,
        prompt_ids: list[int],
        params: GenerationParams,
        cache: KVCache,
        mode: str,
        has_adapter: bool,
        tokenizer: Tokenizer | None = None,
    ) -> None:
        check_prompt_ids(config, prompt_ids)
        if params.stop and tokenizer is None:
            raise ParameterError("stop", "stop strings need the model's tokenizer (use stop token ids)")
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
        if params.logprobs is not None:
            self.state.logprobs = []
        self.penalties = params.penalties if params.penalties.active else None
        self.history = PenaltyHistory(list(prompt_ids), config.vocab_size) if self.penalties else None
        self.text = OutputText(tokenizer, params.stop) if tokenizer is not None else None
        self._prompt = torch.tensor(self.state.prompt_ids, dtype=torch.long)

    @property
    def prompt(self) -> torch.Tensor:
        return self._prompt

    def block_length(self) -> int:
        """The request's block length, or the model's block size (quadratic-spec has its own default)."""
        return self.params.block_length or self.config.block_size

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
        seen: SeenTokens | None = None,
        logprob_rows: torch.Tensor | None = None,
    ) -> StepRequest:
        """A step over `token_ids` placed after the cache. `draft` marks passes where the adapter applies
        (their rows are never emitted: no log-probabilities); `seen`: tokens beyond the emitted output
        that the wanted rows follow (for the penalties); `logprob_rows`: the rows whose log-probabilities
        the policy reads (None: all)."""
        adapter = self.has_adapter and self.params.use_adapter and (draft or self.params.adapter_in_every_pass)
        penalties = None
        if self.penalties is not None and self.history is not None:
            penalties = self.history.context(self.penalties, seen)
        return StepRequest(
            cache=self.cache,
            token_ids=token_ids,
            positions=self.positions(token_ids.shape[0]) if positions is None else positions,
            visibility=visibility,
            sampler=sampler or self.sampler,
            write_cache=write_cache,
            adapter=adapter,
            rows=rows,
            penalties=penalties,
            logprobs=None if draft else self.params.logprobs,
            logprob_rows=logprob_rows,
        )

    def is_eos(self, token: int) -> bool:
        return token in self.eos_ids

    def emit(self, tokens: list[int], logprobs: list[TokenLogprob] | None = None) -> bool:
        """Record final tokens (and their log-probabilities); stop after the first EOS, at a stop
        string, or at max_new_tokens. Returns True when done."""
        keep, reason = self._kept(tokens)
        kept = tokens[:keep]
        state = self.state
        if self.text is not None:
            piece, stop_at = self.text.push(kept)
            if stop_at is not None:
                kept, reason = kept[: stop_at + 1], "stop"
            state.text += piece
        state.new_ids.extend(kept)
        if self.history is not None:
            self.history.add(kept)
        if state.logprobs is not None and logprobs is not None:
            state.logprobs.extend(logprobs[: len(kept)])
        if reason is None:
            return False
        state.finish_reason = reason
        if self.text is not None:
            state.text += self.text.finish()
        return True

    def _kept(self, tokens: list[int]) -> tuple[int, str | None]:
        """How many of `tokens` to keep, and why the output ends with them (None: it goes on)."""
        eos = next((offset for offset, token in enumerate(tokens) if self.is_eos(token)), None)
        room = self.params.max_new_tokens - len(self.state.new_ids)
        if self.params.reference_semantics:  # the released code: EOS ends it anywhere; keep all accepted
            if eos is not None:
                return eos + 1, "stop"
            return len(tokens), "length" if len(tokens) >= room else None
        if eos is not None and eos < room:
            return eos + 1, "stop"
        if len(tokens) >= room:
            return room, "length"
        return len(tokens), None

    @staticmethod
    def logprobs_of(result: StepResult, rows: Iterable[int]) -> list[TokenLogprob] | None:
        """The log-probability entries of `rows` of a step's result (None when none were asked for)."""
        if result.logprobs is None:
            return None
        return [result.logprobs.entry(row) for row in rows]

    def emit_verified(self, tokens: list[int], logprobs: list[TokenLogprob] | None = None) -> bool:
        """`emit` for the tokens one verify accepted, recording its acceptance length: the tokens it
        emitted (fewer when EOS or max_new_tokens cut it; with reference semantics, all it accepted, as
        the released code counts them)."""
        before = len(self.state.new_ids)
        done = self.emit(tokens, logprobs)
        emitted = len(self.state.new_ids) - before
        self.state.acceptance_lengths.append(len(tokens) if self.params.reference_semantics else emitted)
        return done


PolicyFactory = Callable[[Decoding], Policy]


def run_policy(
    backend: StepBackend,
    decoding: Decoding,
    policy: PolicyFactory,
    on_tokens: Callable[[list[int], str], None] | None = None,
) -> Generation:
    """Drive one policy to completion on `backend`, one step at a time; `on_tokens(ids, text)` hears the
    ids that became final after each step and their final text (as the engine streams them)."""
    started = time.perf_counter()
    steps = policy(decoding)
    sent_ids = sent_text = 0

    def report() -> None:
        nonlocal sent_ids, sent_text
        state = decoding.state
        if on_tokens is not None and (len(state.new_ids) > sent_ids or len(state.text) > sent_text):
            on_tokens(list(state.new_ids[sent_ids:]), state.text[sent_text:])
            sent_ids, sent_text = len(state.new_ids), len(state.text)

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
