"""Triton request tensors -> a validated generation request.

Names and types follow TensorRT-LLM's Triton conventions (`text_input` or `input_ids`, `max_tokens`,
`stream`, `temperature`, `top_p`, `top_k`, `seed`, `end_id`, `stop_words`, the three penalties,
`return_log_probs`), plus ours (`mode`, `block_length`, `threshold`, `min_p`, `top_logprobs`).
The prompt is `text_input` (tokenized by the server), `input_ids` (token ids, used as given) or
`messages` (a JSON chat rendered with the checkpoint's template): exactly one of them; every other
input is optional. Errors name the offending input; the bounds of the generation
parameters are nld.limits', checked by GenerationParams as on every other path.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nld.chat_template import check_messages
from nld.engine.scheduler import AUTO
from nld.limits import MAX_STOP_CHARS, MAX_STOP_STRINGS, ParameterError
from nld.modes import MODES, GenerationParams

REQUEST_MODES = (*MODES, AUTO)


class InputError(ValueError):
    """A request input is missing or invalid; `name` is the Triton input's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"input '{name}': {message}")
        self.name = name


# Engine and GenerationParams field names -> the Triton input that carries them.
FIELD_TO_INPUT = {
    "prompt": "text_input",
    "max_new_tokens": "max_tokens",
    "eos_token_ids": "end_id",
    "mode": "mode",
    "block_length": "block_length",
    "threshold": "threshold",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "stop": "stop_words",
    "logprobs": "top_logprobs",
}


def input_error(error: ParameterError, prompt_input: str = "text_input") -> InputError:
    """A parameter error under the name of the Triton input that carries the field (the prompt's:
    `prompt_input`, text_input or input_ids)."""
    name = prompt_input if error.field == "prompt" else FIELD_TO_INPUT.get(error.field, error.field)
    return InputError(name, error.problem)


@dataclass(frozen=True)
class InputSpec:
    """One request tensor: its Triton type, how to read its scalar, and a check that returns an error or None.
    Numeric bounds are not here: GenerationParams checks them (nld.limits), for every front end alike."""

    triton_type: str
    read: Callable[[np.ndarray], Any]
    check: Callable[[Any], str | None] = lambda value: None
    dims: str = "1"  # "-1": a list (input_ids, stop_words)
    max_items: int | None = None  # a list's length cap, checked before it is read (None: the model's context)


def _text(array: np.ndarray) -> str:
    value = array.reshape(-1)[0]
    if not isinstance(value, bytes):
        return str(value)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"is not valid UTF-8: byte {value[error.start]:#04x} at offset {error.start}") from None


def _int(array: np.ndarray) -> int:
    return int(array.reshape(-1)[0])


def _float(array: np.ndarray) -> float:
    return float(array.reshape(-1)[0])


def _bool(array: np.ndarray) -> bool:
    return bool(array.reshape(-1)[0])


def _messages(array: np.ndarray) -> list[dict[str, Any]]:
    try:
        messages = json.loads(_text(array))
    except json.JSONDecodeError as error:
        raise ValueError(f"is not valid JSON: {error.msg} at offset {error.pos}") from None
    return check_messages(messages)


def _stop_words(array: np.ndarray) -> list[str]:
    """The stop strings of a `stop_words` tensor; empty entries are dropped (TensorRT-LLM clients send
    "" for none); an entry over MAX_STOP_CHARS x 4 bytes is refused before it is decoded."""
    words = []
    for value in array.reshape(-1):
        if isinstance(value, bytes) and len(value) > 4 * MAX_STOP_CHARS:
            raise ValueError(f"a stop string of {len(value)} bytes exceeds {4 * MAX_STOP_CHARS}")
        text = _text(np.array([value]))
        if text:
            words.append(text)
    return words


def _ids(array: np.ndarray) -> list[int]:
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"must be integers, got {array.dtype}")
    return [int(token) for token in array.reshape(-1)]


INPUTS: dict[str, InputSpec] = {
    "text_input": InputSpec("TYPE_STRING", _text, lambda v: None if v.strip() else "the prompt is empty"),
    "input_ids": InputSpec("TYPE_INT32", _ids, lambda v: None if v else "the prompt is empty", dims="-1"),
    "messages": InputSpec("TYPE_STRING", _messages),  # a JSON chat: [{"role": ..., "content": ...}, ...]
    "max_tokens": InputSpec("TYPE_INT32", _int),
    "stream": InputSpec("TYPE_BOOL", _bool),
    "temperature": InputSpec("TYPE_FP32", _float),
    "top_p": InputSpec("TYPE_FP32", _float),
    "top_k": InputSpec("TYPE_INT32", _int),
    "min_p": InputSpec("TYPE_FP32", _float),
    "seed": InputSpec("TYPE_UINT64", _int),
    "end_id": InputSpec("TYPE_INT32", _int),
    "mode": InputSpec(
        "TYPE_STRING", _text, lambda v: None if v in REQUEST_MODES else f"unknown mode '{v}': one of {REQUEST_MODES}"
    ),
    "block_length": InputSpec("TYPE_INT32", _int),
    "threshold": InputSpec("TYPE_FP32", _float),
    "stop_words": InputSpec("TYPE_STRING", _stop_words, dims="-1", max_items=MAX_STOP_STRINGS),
    "repetition_penalty": InputSpec("TYPE_FP32", _float),
    "presence_penalty": InputSpec("TYPE_FP32", _float),
    "frequency_penalty": InputSpec("TYPE_FP32", _float),
    "return_log_probs": InputSpec("TYPE_BOOL", _bool),  # the chosen tokens' log-probabilities
    "top_logprobs": InputSpec("TYPE_INT32", _int),  # and the n most likely at each position (implies them)
}
REQUIRED: tuple[str, ...] = ()  # the prompt is one of PROMPT_INPUTS, checked by parse_inputs
PROMPT_INPUTS = ("text_input", "input_ids", "messages")
TEXT_PROMPTS = ("text_input", "messages")  # capped in bytes before they are decoded


@dataclass(frozen=True)
class ServeRequest:
    text: str | None  # the prompt as text, or
    prompt_ids: list[int] | None  # as token ids, or
    messages: list[dict[str, Any]] | None  # as a chat for the checkpoint's template (exactly one is set)
    mode: str
    stream: bool
    params: GenerationParams


def _byte_length(array: np.ndarray) -> int:
    value = array.reshape(-1)[0]
    return len(value) if isinstance(value, bytes) else len(str(value).encode("utf-8"))


def requested_logprobs(values: dict[str, Any]) -> int | None:
    """GenerationParams.logprobs from `return_log_probs` and `top_logprobs` (None: no log-probabilities)."""
    if "top_logprobs" in values:
        return values["top_logprobs"]
    return 0 if values.get("return_log_probs") else None


def parse_inputs(
    tensors: Mapping[str, np.ndarray | None],
    default_mode: str,
    default_max_tokens: int,
    max_prompt_bytes: int | None = None,
    max_prompt_ids: int | None = None,
) -> ServeRequest:
    """Read and check every known input present in `tensors` (absent inputs map to None or are missing).
    A prompt longer than `max_prompt_bytes` (text) or `max_prompt_ids` (ids) is refused before it is
    decoded, tokenized or read."""
    given = [name for name in PROMPT_INPUTS if tensors.get(name) is not None]
    if len(given) != 1:
        problem = (
            "is required (or input_ids, or messages)" if not given else f"send one prompt, not {' and '.join(given)}"
        )
        raise InputError("text_input", problem)
    values: dict[str, Any] = {}
    for name, spec in INPUTS.items():
        array = tensors.get(name)
        if array is None:
            continue
        if spec.dims == "1" and array.size != 1:
            raise InputError(name, f"expected one value, got shape {tuple(array.shape)}")
        if spec.max_items is not None and array.size > spec.max_items:
            raise InputError(name, f"{array.size} values exceed {spec.max_items}")
        if spec.dims != "1" and spec.max_items is None and max_prompt_ids is not None and array.size > max_prompt_ids:
            raise InputError(name, f"{array.size} ids exceed the model's context of {max_prompt_ids} tokens")
        if (
            name in ("text_input", "messages")
            and max_prompt_bytes is not None
            and _byte_length(array) > max_prompt_bytes
        ):
            raise InputError(
                name,
                f"{_byte_length(array)} bytes exceed the {max_prompt_bytes} bytes any prompt that fits the "
                "model's context can have",
            )
        try:
            value = spec.read(array)
        except (ValueError, OverflowError) as error:
            raise InputError(name, str(error)) from None
        problem = spec.check(value)
        if problem:
            raise InputError(name, problem)
        values[name] = value
    try:
        params = GenerationParams(
            max_new_tokens=values.get("max_tokens", default_max_tokens),
            block_length=values.get("block_length"),
            threshold=values.get("threshold"),
            temperature=values.get("temperature", 0.0),
            top_p=values.get("top_p", 1.0),
            top_k=values.get("top_k", 0),
            min_p=values.get("min_p", 0.0),
            seed=values.get("seed"),
            eos_token_ids=(values["end_id"],) if "end_id" in values else None,
            repetition_penalty=values.get("repetition_penalty", 1.0),
            presence_penalty=values.get("presence_penalty", 0.0),
            frequency_penalty=values.get("frequency_penalty", 0.0),
            logprobs=requested_logprobs(values),
            stop=tuple(values.get("stop_words", ())),
        )
    except ParameterError as error:
        raise input_error(error) from None
    return ServeRequest(
        values.get("text_input"),
        values.get("input_ids"),
        values.get("messages"),
        values.get("mode", default_mode),
        values.get("stream", True),
        params,
    )
