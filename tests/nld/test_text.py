"""A request's output text: incremental detokenization that never cuts a character, and stop strings
cut exactly before the stop, held back while they may still be forming, in every mode with the
compute stopped at the token that completes the stop."""

from __future__ import annotations

from functools import cache

import pytest

from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams
from nld.text import IncrementalText, OutputText, held_suffix
from nld.tokenizer import NLDTokenizer


@cache
def builtin() -> tuple[object, NLDTokenizer]:
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    return load_backend(str(default_model_dir())), tokenizer


def test_incremental_text_adds_up_and_never_cuts_a_character() -> None:
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    text = "def f(x):\n    return 'héllo → wörld' + x  # ✓\n"
    ids = tokenizer.encode_prompt(text, chat=False)[1:]  # without BOS
    stream = IncrementalText(tokenizer.tokenizer)
    pieces = [stream.push([token]) for token in ids] + [stream.flush()]
    assert "".join(pieces) == tokenizer.decode(ids) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert any(piece == "" for piece in pieces[:-1])  # a multi-byte character was held back at least once


def test_incremental_text_equals_the_whole_decode_on_long_text() -> None:
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    ids = tokenizer.encode_prompt("def loop():\n    return 'ü → ✓'\n" * 200, chat=False)[1:]
    stream = IncrementalText(tokenizer.tokenizer)
    text = "".join(stream.push(ids[i : i + 3]) for i in range(0, len(ids), 3)) + stream.flush()
    assert text == tokenizer.decode(ids)


def test_flush_gives_a_cut_character_as_replacement() -> None:
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    ids = tokenizer.encode_prompt("→", chat=False)[1:]
    assert len(ids) > 1  # byte fallback: one character, several ids
    stream = IncrementalText(tokenizer.tokenizer)
    assert stream.push(ids[:-1]) == ""
    assert stream.flush() == tokenizer.decode(ids[:-1])


def test_held_suffix_is_the_longest_stop_prefix_at_the_end() -> None:
    assert held_suffix("x = ab", ("abc",)) == 2
    assert held_suffix("x = a", ("abc", "xa")) == 1
    assert held_suffix("aab", ("aabx", "b")) == 3
    assert held_suffix("plain", ("abc",)) == 0


def test_a_stop_across_tokens_is_cut_before_it_and_nothing_after_it_is_released() -> None:
    _, tokenizer = builtin()
    text = "value = compute(x)\nreturn value\n"
    ids = tokenizer.encode_prompt(text, chat=False)[1:]
    output = OutputText(tokenizer.tokenizer, ("return",))
    released, stopped_at = "", None
    for index, token in enumerate(ids):
        piece, at = output.push([token])
        released += piece
        assert "retur" not in released  # a partial stop is held back, never streamed
        if at is not None:
            stopped_at = index
            break
    assert released == text[: text.index("return")]
    assert stopped_at is not None and "return" in tokenizer.decode(ids[: stopped_at + 1])
    assert "return" not in tokenizer.decode(ids[:stopped_at])
    assert output.finish() == ""


def test_held_text_is_released_at_the_end_when_no_stop_follows() -> None:
    _, tokenizer = builtin()
    ids = tokenizer.encode_prompt("x = re", chat=False)[1:]
    output = OutputText(tokenizer.tokenizer, ("return",))
    piece, at = output.push(ids)
    assert at is None and piece + output.finish() == "x = re"


@pytest.mark.parametrize("mode", list(MODES))
def test_stop_strings_end_generation_in_every_mode(mode: str) -> None:
    backend, tokenizer = builtin()
    prompt = tokenizer.encode_prompt("def add(a, b):")
    full = generate(backend, prompt, mode, GenerationParams(max_new_tokens=48), tokenizer=tokenizer.tokenizer)
    assert full.text == tokenizer.decode(full.new_ids)
    stop = full.text.strip()[4:9]  # a piece of the output, a few tokens in
    params = GenerationParams(max_new_tokens=48, stop=("never there", stop))
    heard: list[str] = []
    cut = generate(backend, prompt, mode, params, lambda ids, text: heard.append(text), tokenizer.tokenizer)
    assert cut.text == full.text[: full.text.index(stop)] == "".join(heard)
    assert cut.finish_reason == "stop"
    assert cut.new_ids == full.new_ids[: len(cut.new_ids)]  # the ids through the one completing the stop
    assert stop in tokenizer.decode(cut.new_ids) and stop not in tokenizer.decode(cut.new_ids[:-1])
    assert cut.nfe < full.nfe  # the compute stopped there


def test_stop_strings_without_a_tokenizer_are_refused() -> None:
    backend, _ = builtin()
    with pytest.raises(ValueError, match="stop: stop strings need the model's tokenizer"):
        generate(backend, [1, 2, 3], "ar", GenerationParams(max_new_tokens=4, stop=("x",)))


def test_stray_bytes_are_given_up_after_four_ids_not_held_forever() -> None:
    _, tokenizer = builtin()
    lead = tokenizer.encode_prompt("→", chat=False)[1:][0]  # the first byte of a 3-byte character
    stream = IncrementalText(tokenizer.tokenizer)
    pieces = [stream.push([lead]) for _ in range(4000)]
    assert len(stream._held) <= 4 and "\ufffd" in "".join(pieces)  # O(1) per token, not a re-decode of all
