"""Request bounds: the one place where every generation parameter's finite limits are written.

`GenerationParams` checks its fields against `BOUNDS` when it is built; `check_request` adds the bounds
that depend on the model (its context, the block length a mode may use, the EOS ids) and is called by
the engine at submission and by `generate`. Front ends (Triton inputs, the OpenAI worker) build
`GenerationParams` and call the same functions, so a bound is written once. Every error is a
`ParameterError` naming its field; a front end reports it under its own name for that field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING

from nld.config import NLDConfig

if TYPE_CHECKING:
    from nld.modes.base import GenerationParams

MAX_TEMPERATURE = 100.0
GREEDY_BELOW = 1e-5  # temperatures in (0, GREEDY_BELOW) decode greedily: logits / T would overflow float32
MAX_NEW_TOKENS = 2**31 - 1  # the field's own bound; the model's context bounds it further
MAX_SEED = 2**64 - 1
# A step's cost grows with its width: B tokens for diffusion and linear-spec, B*(B+1) for quadratic-spec.
MAX_REPETITION_PENALTY = 10.0
MAX_TOP_LOGPROBS = 20  # OpenAI's and vLLM's default cap on top_logprobs
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
BLOCK_LENGTH_CAP = {"diffusion": 128, "linear-spec": 128, "quadratic-spec": 32}


class ParameterError(ValueError):
    """A request parameter out of bounds. `field` names it (GenerationParams' name, or `prompt` /
    `mode`); `problem` says what is wrong without the name, for front ends that use their own names."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


@dataclass(frozen=True)
class Bound:
    """A closed interval [low, high] (open at low when `low_open`), of integers when `integer`."""

    low: float
    high: float
    low_open: bool = False
    integer: bool = False

    def problem(self, value: object) -> str | None:
        """Why `value` is out of bounds, or None when it is in them."""
        kind = Integral if self.integer else Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"must be {'an integer' if self.integer else 'a number'}, got {value!r}"
        if not math.isfinite(value):
            return f"must be finite, got {value}"
        low_ok = value > self.low if self.low_open else value >= self.low
        if low_ok and value <= self.high:
            return None
        return f"must lie in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}], got {value}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


BOUNDS: dict[str, Bound] = {
    "max_new_tokens": Bound(1, MAX_NEW_TOKENS, integer=True),
    "block_length": Bound(1, max(BLOCK_LENGTH_CAP.values()), integer=True),
    "threshold": Bound(0.0, 1.0),
    "temperature": Bound(0.0, MAX_TEMPERATURE),
    "top_p": Bound(0.0, 1.0, low_open=True),
    "top_k": Bound(0, 2**31 - 1, integer=True),  # 0: off
    "min_p": Bound(0.0, 1.0),  # 0: off
    "seed": Bound(0, MAX_SEED, integer=True),
    "repetition_penalty": Bound(0.0, MAX_REPETITION_PENALTY, low_open=True),  # 1: off
    "presence_penalty": Bound(-2.0, 2.0),  # 0: off (OpenAI's range)
    "frequency_penalty": Bound(-2.0, 2.0),  # 0: off
    "logprobs": Bound(0, MAX_TOP_LOGPROBS, integer=True),  # None: off; n: the chosen id's and the top n
}
EOS_ID = Bound(0, 2**31 - 1, integer=True)
MAX_EOS_IDS = 256  # stop token ids a request may give


def check_value(field: str, value: object) -> None:
    """Raise ParameterError when `value` is outside the bounds of `field` (None means unset: allowed)."""
    if value is None:
        return
    problem = BOUNDS[field].problem(value)
    if problem:
        raise ParameterError(field, problem)


def check_fields(
    values: dict[str, object], eos_token_ids: Iterable[object] | None, stop: Iterable[object] = ()
) -> None:
    """The model-free bounds of a request's parameters, {BOUNDS key: value} (GenerationParams calls this)."""
    for field, value in values.items():
        check_value(field, value)
    check_stop_strings(stop)
    eos_token_ids = list(eos_token_ids or ())
    if len(eos_token_ids) > MAX_EOS_IDS:
        raise ParameterError("eos_token_ids", f"{len(eos_token_ids)} ids exceed {MAX_EOS_IDS}")
    for token in eos_token_ids:
        problem = EOS_ID.problem(token)
        if problem:
            raise ParameterError("eos_token_ids", problem)


def check_stop_strings(stop: Iterable[object]) -> None:
    """At most MAX_STOP_STRINGS non-empty strings of at most MAX_STOP_CHARS characters each."""
    if isinstance(stop, str):
        raise ParameterError("stop", "must be a list of strings, got one string")
    stop = list(stop)
    if len(stop) > MAX_STOP_STRINGS:
        raise ParameterError("stop", f"{len(stop)} stop strings exceed {MAX_STOP_STRINGS}")
    for text in stop:
        if not isinstance(text, str) or not text:
            raise ParameterError("stop", f"stop strings must be non-empty strings, got {text!r}")
        if len(text) > MAX_STOP_CHARS:
            raise ParameterError("stop", f"a stop string of {len(text)} characters exceeds {MAX_STOP_CHARS}")


def max_block_length(config: NLDConfig, mode: str) -> int:
    """The largest block_length `mode` takes on this model: its cap, and at most half the context."""
    return min(BLOCK_LENGTH_CAP[mode], max(1, config.max_position_embeddings // 2))


def check_prompt_ids(config: NLDConfig, prompt_ids: list[int]) -> None:
    """A prompt is at least one token, every id in the vocabulary."""
    if not prompt_ids:
        raise ParameterError("prompt", "the prompt is empty")
    if min(prompt_ids) < 0 or max(prompt_ids) >= config.vocab_size:
        raise ParameterError("prompt", f"prompt token ids must lie in [0, {config.vocab_size})")


def check_request(config: NLDConfig, mode: str, prompt_length: int, params: GenerationParams) -> None:
    """The bounds that depend on the model: context, the mode's block length, EOS ids in the vocabulary."""
    max_new_tokens, block_length = params.max_new_tokens, params.block_length
    context = config.max_position_embeddings
    if prompt_length >= context:
        raise ParameterError("prompt", f"{prompt_length} tokens leave no room in the model's context of {context}")
    if prompt_length + max_new_tokens > context:
        raise ParameterError(
            "max_new_tokens",
            f"the prompt ({prompt_length} tokens) + {max_new_tokens} new tokens exceed the model's context of "
            f"{context} tokens",
        )
    if block_length is not None and mode in BLOCK_LENGTH_CAP:
        limit = max_block_length(config, mode)
        if block_length > limit:
            raise ParameterError(
                "block_length", f"must be <= {limit} for mode {mode} on this model, got {block_length}"
            )
    for token in params.eos_token_ids or ():
        if token >= config.vocab_size:
            raise ParameterError("eos_token_ids", f"must lie in [0, {config.vocab_size}), got {token}")


def max_prompt_bytes(context: int, longest_token_bytes: int) -> int:
    """The longest prompt text (UTF-8 bytes) that can still fit `context` tokens: longer text is refused
    before tokenizing, so one huge prompt cannot stall the server."""
    return context * max(1, longest_token_bytes)
