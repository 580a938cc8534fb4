"""Triton request tensors -> a validated generation request.

Names and types follow TensorRT-LLM's Triton conventions (`text_input`, `max_tokens`, `stream`,
`temperature`, `top_p`, `seed`, `end_id`), plus ours (`mode`, `block_length`, `threshold`). Every
input but `text_input` is optional. Errors name the offending input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nld.engine.scheduler import AUTO
from nld.modes import MODES, GenerationParams

REQUEST_MODES = (*MODES, AUTO)


class InputError(ValueError):
    """A request input is missing or invalid; `name` is the Triton input's name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"input '{name}': {message}")
        self.name = name


@dataclass(frozen=True)
class InputSpec:
    """One request tensor: its Triton type, how to read its scalar, and a check that returns an error or None."""

    triton_type: str
    read: Callable[[np.ndarray], Any]
    check: Callable[[Any], str | None] = lambda value: None


def _text(array: np.ndarray) -> str:
    value = array.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _int(array: np.ndarray) -> int:
    return int(array.reshape(-1)[0])


def _float(array: np.ndarray) -> float:
    return float(array.reshape(-1)[0])


def _bool(array: np.ndarray) -> bool:
    return bool(array.reshape(-1)[0])


def _positive(value: int) -> str | None:
    return None if value > 0 else f"must be > 0, got {value}"


def _unit_interval(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"must lie in [0, 1], got {value}"


INPUTS: dict[str, InputSpec] = {
    "text_input": InputSpec("TYPE_STRING", _text, lambda v: None if v.strip() else "the prompt is empty"),
    "max_tokens": InputSpec("TYPE_INT32", _int, _positive),
    "stream": InputSpec("TYPE_BOOL", _bool),
    "temperature": InputSpec("TYPE_FP32", _float, lambda v: None if v >= 0 else f"must be >= 0, got {v}"),
    "top_p": InputSpec("TYPE_FP32", _float, lambda v: None if 0 < v <= 1 else f"must lie in (0, 1], got {v}"),
    "seed": InputSpec("TYPE_UINT64", _int),
    "end_id": InputSpec("TYPE_INT32", _int, lambda v: None if v >= 0 else f"must be >= 0, got {v}"),
    "mode": InputSpec(
        "TYPE_STRING", _text, lambda v: None if v in REQUEST_MODES else f"unknown mode '{v}': one of {REQUEST_MODES}"
    ),
    "block_length": InputSpec("TYPE_INT32", _int, _positive),
    "threshold": InputSpec("TYPE_FP32", _float, _unit_interval),
}
REQUIRED = ("text_input",)


@dataclass(frozen=True)
class ServeRequest:
    text: str
    mode: str
    stream: bool
    params: GenerationParams


def parse_inputs(tensors: Mapping[str, np.ndarray | None], default_mode: str, default_max_tokens: int) -> ServeRequest:
    """Read and check every known input present in `tensors` (absent inputs map to None or are missing)."""
    values: dict[str, Any] = {}
    for name, spec in INPUTS.items():
        array = tensors.get(name)
        if array is None:
            if name in REQUIRED:
                raise InputError(name, "is required")
            continue
        if array.size != 1:
            raise InputError(name, f"expected one value, got shape {tuple(array.shape)}")
        value = spec.read(array)
        problem = spec.check(value)
        if problem:
            raise InputError(name, problem)
        values[name] = value
    params = GenerationParams(
        max_new_tokens=values.get("max_tokens", default_max_tokens),
        block_length=values.get("block_length"),
        threshold=values.get("threshold"),
        temperature=values.get("temperature", 0.0),
        top_p=values.get("top_p", 1.0),
        seed=values.get("seed"),
        eos_token_ids=(values["end_id"],) if "end_id" in values else None,
    )
    return ServeRequest(values["text_input"], values.get("mode", default_mode), values.get("stream", True), params)
