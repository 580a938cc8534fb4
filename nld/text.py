"""A request's output text: token ids to text pieces that never split a character, in O(1) per token,
and stop strings found in that text.

`tokenizers.decoders.DecodeStream` decodes each new id against the few before it (a full re-decode per
step made streaming O(n^2): 2.1 s for 4000 tokens). `OutputText` adds stop strings: text that could be
the start of a stop string is held back, so a streamed piece never has to be taken back, and a stop
string found cuts the text exactly before it."""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

MAX_HELD_IDS = 4  # a UTF-8 character is at most 4 bytes, so at most 4 byte-fallback ids


class IncrementalText:
    """Feed final token ids; get the new text since the last call. Ids that end inside a character (a
    partial UTF-8 sequence) are held back until the ids that complete it arrive, or until `flush`."""

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._held: list[int] = []

    def push(self, new_ids: list[int]) -> str:
        pieces = []
        for token in new_ids:
            piece = self._stream.step(self.tokenizer, token)
            if piece is None:
                self._held.append(token)
                if len(self._held) > MAX_HELD_IDS:  # no character is this long: give up on it (U+FFFD), so a
                    pieces.append(self.flush())  # run of stray bytes cannot make each step re-decode them all
            else:
                self._held.clear()
                pieces.append(piece)
        return "".join(pieces)

    def flush(self) -> str:
        """What the held ids decode to on their own (a cut character as U+FFFD); then start afresh."""
        held, self._held = self._held, []
        self._stream = DecodeStream(skip_special_tokens=self.skip_special_tokens)
        return self.tokenizer.decode(held, skip_special_tokens=self.skip_special_tokens) if held else ""


class NoText:
    """IncrementalText's stand-in for a model without a tokenizer: every piece is empty (the ids are
    in `output_ids`)."""

    def push(self, new_ids: list[int]) -> str:
        return ""

    def flush(self) -> str:
        return ""


def held_suffix(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    longest = 0
    for stop in stops:
        at = text.find(stop[0], max(0, len(text) - len(stop) + 1))
        while at >= 0 and len(text) - at > longest:
            if stop.startswith(text[at:]):
                longest = len(text) - at
                break
            at = text.find(stop[0], at + 1)
    return longest


class OutputText:
    """Feed a request's final ids; get the text that is final, and where a stop string ended the output.

    `push(ids)` returns (text, index): the new final text, and the index in `ids` of the token whose
    text completed a stop string (None when no stop string was found). After a stop the text is
    complete: it ends exactly before the stop string. `finish()` releases what was held back."""

    def __init__(self, tokenizer: Tokenizer | None, stops: tuple[str, ...] = ()) -> None:
        if stops and tokenizer is None:
            raise ValueError("stop strings need the model's tokenizer")
        self.decoder: IncrementalText | NoText = IncrementalText(tokenizer) if tokenizer is not None else NoText()
        self.stops = stops
        self._pending = ""  # decoded, not yet released: it could begin a stop string
        self.stopped = False

    def push(self, ids: list[int]) -> tuple[str, int | None]:
        if not self.stops:
            return self.decoder.push(ids), None
        released = []
        for index, token in enumerate(ids):
            self._pending += self.decoder.push([token])
            found = [at for at in (self._pending.find(stop) for stop in self.stops) if at >= 0]
            if found:
                released.append(self._pending[: min(found)])
                self._pending = ""
                self.stopped = True
                return "".join(released), index
            keep = held_suffix(self._pending, self.stops)
            released.append(self._pending[: len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep :]
        return "".join(released), None

    def finish(self) -> str:
        """The held-back text (no stop string followed it), with any cut character as U+FFFD."""
        if self.stopped:
            return ""
        rest, self._pending = self._pending + self.decoder.flush(), ""
        found = [at for at in (rest.find(stop) for stop in self.stops) if at >= 0]
        return rest[: min(found)] if found else rest
