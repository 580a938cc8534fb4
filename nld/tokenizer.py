"""Checkpoint tokenizer: `tokenizer.json` (HF tokenizers) and the chat template of tokenizer_config.json."""

from __future__ import annotations

from pathlib import Path

import jinja2
import jinja2.sandbox
from tokenizers import Tokenizer

from nld.config import read_json
from nld.errors import ConfigError

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


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
        template, special = None, {}
        config_path = model_dir / TOKENIZER_CONFIG_FILE
        if config_path.exists():
            data = read_json(config_path)
            template = data.get("chat_template")
            if template is not None and not isinstance(template, str):
                raise ConfigError(f"{config_path}: field 'chat_template' must be a string")
            special = {k: v for k, v in data.items() if k.endswith("_token") and isinstance(v, str)}
        return cls(tokenizer, template, special)

    def apply_chat_template(self, user_text: str) -> str:
        """Render one user turn with the checkpoint's chat template, ready for the assistant's reply."""
        if self.chat_template is None:
            return user_text
        environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        try:
            template = environment.from_string(self.chat_template)
            return template.render(
                messages=[{"role": "user", "content": user_text}], add_generation_prompt=True, **self.special
            )
        except jinja2.TemplateError as exc:
            raise ConfigError(f"{TOKENIZER_CONFIG_FILE}: chat_template fails to render ({exc})") from None

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
