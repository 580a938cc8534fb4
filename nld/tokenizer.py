"""Checkpoint tokenizer: `tokenizer.json` (HF tokenizers) and the checkpoint's chat template (nld.chat_template)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from nld.chat_template import check_messages, load_chat_template, plain_chat_template, render_chat, special_tokens
from nld.errors import ConfigError

TOKENIZER_FILE = "tokenizer.json"


class NLDTokenizer:
    """Encode prompts (through the chat template when the checkpoint has one) and decode outputs."""

    def __init__(self, tokenizer: Tokenizer, chat_template: str | None, special: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.special = special

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> NLDTokenizer | None:
        """Load the tokenizer of a checkpoint folder, or None when it ships no tokenizer.json."""
        model_dir = Path(model_dir)
        path = model_dir / TOKENIZER_FILE
        if not path.exists():
            return None
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ConfigError(f"{path}: cannot load tokenizer ({exc})") from None
        return cls(tokenizer, load_chat_template(model_dir), special_tokens(model_dir))

    def apply_chat_template(self, user_text: str) -> str:
        """Render one user turn with the checkpoint's chat template, ready for the assistant's reply."""
        return self.render_messages([{"role": "user", "content": user_text}])

    def render_messages(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """A conversation through the chat template (transformers' semantics), or nld's plain template
        when the checkpoint has none."""
        check_messages(messages)
        template = self.chat_template or plain_chat_template()
        return render_chat(template, messages, self.special, add_generation_prompt)

    def encode_messages(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation, as apply_chat_template(tokenize=True) gives them: specials in the
        rendered text are parsed as specials and none are added. Without a checkpoint template the plain
        one renders it and the tokenizer adds its specials (BOS), as for a text prompt."""
        text = self.render_messages(messages)
        return self.tokenizer.encode(text, add_special_tokens=self.chat_template is None).ids

    def encode_prompt(self, text: str, *, chat: bool = True) -> list[int]:
        """Token ids of a prompt; specials in the rendered template are parsed as specials."""
        rendered = self.apply_chat_template(text) if chat else text
        return self.tokenizer.encode(rendered, add_special_tokens=not (chat and self.chat_template)).ids

    def longest_token_bytes(self) -> int:
        """UTF-8 bytes of the longest vocabulary entry (added tokens included): no token covers more text
        (byte-level entries spell one byte per character, so this over-counts them, never under)."""
        vocabulary = self.tokenizer.get_vocab(with_added_tokens=True)
        return max((len(token.encode("utf-8")) for token in vocabulary), default=1)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
