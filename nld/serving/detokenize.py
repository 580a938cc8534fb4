"""Turn a growing list of token ids into text pieces that never split a character."""

from __future__ import annotations

from collections.abc import Callable

REPLACEMENT = "\ufffd"


class IncrementalText:
    """Feed final token ids; get the new text since the last call. A trailing partial UTF-8 sequence
    (decoded as U+FFFD) is held back until the tokens that complete it arrive, or until `flush`."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.ids: list[int] = []
        self.sent = ""

    def push(self, new_ids: list[int]) -> str:
        self.ids.extend(new_ids)
        text = self.decode(self.ids)
        if text.endswith(REPLACEMENT):
            return ""
        return self._take(text)

    def flush(self) -> str:
        return self._take(self.decode(self.ids))

    def _take(self, text: str) -> str:
        # Byte-level BPE decodes prefix-consistently once no character is cut, so pieces add up to the whole.
        piece = text[len(self.sent) :]
        self.sent = text
        return piece
