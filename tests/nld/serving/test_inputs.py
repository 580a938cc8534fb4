"""Request inputs: TRT-LLM-style tensors parse into generation settings; every bad input is named."""

from __future__ import annotations

import numpy as np
import pytest

from nld.serving.inputs import InputError, parse_inputs


def tensors(**values: object) -> dict[str, np.ndarray]:
    return {name: np.array([[value]]) for name, value in values.items()}


def test_defaults_and_values() -> None:
    parsed = parse_inputs(tensors(text_input=b"def f():"), "linear-spec", 64)
    assert (parsed.text, parsed.mode, parsed.stream) == ("def f():", "linear-spec", True)
    assert parsed.params.max_new_tokens == 64
    parsed = parse_inputs(
        tensors(text_input=b"x", mode=b"ar", max_tokens=5, stream=False, temperature=0.5, top_p=0.9, seed=7, end_id=2),
        "linear-spec",
        64,
    )
    params = parsed.params
    assert parsed.mode == "ar" and not parsed.stream
    assert (params.max_new_tokens, params.temperature, params.seed, params.eos_token_ids) == (5, 0.5, 7, (2,))
    assert params.top_p == pytest.approx(0.9)


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"text_input": b"   "}, "text_input"),
        ({}, "text_input"),
        ({"text_input": b"x", "max_tokens": 0}, "max_tokens"),
        ({"text_input": b"x", "mode": b"beam"}, "mode"),
        ({"text_input": b"x", "threshold": 1.5}, "threshold"),
        ({"text_input": b"x", "block_length": 0}, "block_length"),
        ({"text_input": b"x", "top_p": 0.0}, "top_p"),
        ({"text_input": b"x", "temperature": np.float32(np.inf)}, "temperature"),
        ({"text_input": b"x", "temperature": np.float32(np.nan)}, "temperature"),
        ({"text_input": b"x", "threshold": np.float32(np.nan)}, "threshold"),
        ({"text_input": b"x", "block_length": np.int32(2**31 - 1)}, "block_length"),
        ({"text_input": b"x", "end_id": -1}, "end_id"),
        ({"text_input": b"caf\xff"}, "text_input"),
        ({"text_input": b"x", "mode": b"\xfe"}, "mode"),
    ],
)
def test_bad_inputs_are_named(values: dict, name: str) -> None:
    with pytest.raises(InputError, match=f"input '{name}'"):
        parse_inputs(tensors(**values), "ar", 16)


def test_invalid_utf8_names_the_input_and_the_byte() -> None:
    with pytest.raises(InputError, match=r"input 'text_input': is not valid UTF-8: byte 0xff at offset 3"):
        parse_inputs(tensors(text_input=b"caf\xff"), "ar", 16)


def test_a_prompt_over_the_byte_cap_is_refused_before_decoding() -> None:
    parse_inputs(tensors(text_input=b"x" * 100), "ar", 16, max_prompt_bytes=100)
    with pytest.raises(InputError, match="input 'text_input': 101 bytes exceed the 100 bytes"):
        parse_inputs(tensors(text_input=b"x" * 100 + b"\xff"), "ar", 16, max_prompt_bytes=100)


def test_one_value_per_input() -> None:
    with pytest.raises(InputError, match="expected one value"):
        parse_inputs({"text_input": np.array([b"a", b"b"])}, "ar", 16)


def test_token_id_prompts() -> None:
    parsed = parse_inputs({"input_ids": np.array([[1, 482, 796]], dtype=np.int32)}, "ar", 8)
    assert (parsed.text, parsed.prompt_ids) == (None, [1, 482, 796])
    both = {"text_input": np.array([[b"x"]]), "input_ids": np.array([[1]], dtype=np.int32)}
    with pytest.raises(InputError, match="input 'text_input': send one prompt, not text_input and input_ids"):
        parse_inputs(both, "ar", 8)
    with pytest.raises(InputError, match="input 'input_ids': 2000 ids exceed the model's context of 1024"):
        parse_inputs({"input_ids": np.ones((1, 2000), dtype=np.int32)}, "ar", 8, max_prompt_ids=1024)
    with pytest.raises(InputError, match="input 'input_ids': must be integers"):
        parse_inputs({"input_ids": np.array([[1.5]], dtype=np.float32)}, "ar", 8)
    with pytest.raises(InputError, match="input 'input_ids': the prompt is empty"):
        parse_inputs({"input_ids": np.zeros((1, 0), dtype=np.int32)}, "ar", 8)


def test_chat_prompts() -> None:
    chat = b'[{"role": "system", "content": "# py"}, {"role": "user", "content": "def f():"}]'
    parsed = parse_inputs({"messages": np.array([[chat]], dtype=np.object_)}, "ar", 8)
    assert parsed.messages == [{"role": "system", "content": "# py"}, {"role": "user", "content": "def f():"}]
    bad = {
        b"not json": "is not valid JSON",
        b"[]": "must be a non-empty list of messages",
        b'[{"content": "x"}]': "message 0 must be an object with a string 'role'",
        b'[{"role": "user", "content": 5}]': "message 0: 'content' must be a string or a list of parts",
    }
    for value, message in bad.items():
        with pytest.raises(InputError, match=f"input 'messages': {message}"):
            parse_inputs({"messages": np.array([[value]], dtype=np.object_)}, "ar", 8)
    with pytest.raises(InputError, match="input 'messages': 300 bytes exceed"):
        parse_inputs({"messages": np.array([[b" " * 300]], dtype=np.object_)}, "ar", 8, max_prompt_bytes=100)
