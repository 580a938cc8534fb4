"""Chat templates as Hugging Face renders them: where a checkpoint keeps its template, and the Jinja
environment transformers' `apply_chat_template` gives it.

The template is `chat_template.jinja` in the checkpoint folder, else `chat_template` in
tokenizer_config.json (a string, or a list of named templates: "default" is used). It renders in a
sandbox with trim_blocks/lstrip_blocks, `{% break %}`/`{% continue %}`, `{% generation %}` blocks
(rendered as their body), the `tojson` filter (no HTML escaping), `raise_exception`, `strftime_now`,
`dict` and `namespace`, and sees `messages`, `add_generation_prompt`, `tools`, `documents` and the
tokenizer's special tokens (`bos_token`, `eos_token`, ...).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.sandbox
import jinja2.utils

from nld.config import read_json
from nld.errors import ConfigError

TEMPLATE_FILE = "chat_template.jinja"
# nld's template for checkpoints that ship none (the built-in code-completion model): the messages'
# contents in order, one per line, no role markers. Every path (CLI, Triton, OpenAI) uses it alike.
PLAIN_CHAT_TEMPLATE = Path(__file__).with_name("plain_chat.jinja")
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
MAX_MESSAGES = 1024  # a request's bound, far above any real conversation that fits a context


class GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers marks assistant tokens with it): the body."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class GuardedNamespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore attributes (no way to CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        values = dict(*rest, **kwargs)
        for name in values:
            GuardedNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, values)

    def __setitem__(self, name: str, value: Any) -> None:
        GuardedNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template cannot set {name!r} on a namespace")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:  # fmt: skip
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=GuardedNamespace)
    env.globals["dict"] = dict
    return env


@functools.cache
def plain_chat_template() -> str:
    """nld's plain template (for checkpoints without one), read once."""
    return PLAIN_CHAT_TEMPLATE.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=16)
def compiled_template(template: str) -> jinja2.Template:
    """`template` compiled once (a server renders one template for every request: compiling it costs
    ~1.5 ms, rendering it ~0.1 ms)."""
    return environment().from_string(template)


def load_chat_template(model_dir: str | Path) -> str | None:
    """The checkpoint's chat template, or None when it has none."""
    model_dir = Path(model_dir)
    if (model_dir / TEMPLATE_FILE).is_file():
        return (model_dir / TEMPLATE_FILE).read_text(encoding="utf-8")
    config_path = model_dir / TOKENIZER_CONFIG_FILE
    if not config_path.exists():
        return None
    template = read_json(config_path).get("chat_template")
    if template is None or isinstance(template, str):
        return template
    if isinstance(template, list) and all(isinstance(t, dict) and {"name", "template"} <= set(t) for t in template):
        named = {t["name"]: t["template"] for t in template}
        if "default" in named or len(named) == 1:
            return named.get("default", next(iter(named.values())))
        raise ConfigError(f"{config_path}: chat_template names {sorted(named)} but no 'default'")
    raise ConfigError(f"{config_path}: field 'chat_template' must be a string or a list of named templates")


def special_tokens(model_dir: str | Path) -> dict[str, str]:
    """tokenizer_config.json's `*_token` entries as strings (added-token objects give their content)."""
    config_path = Path(model_dir) / TOKENIZER_CONFIG_FILE
    if not config_path.exists():
        return {}
    tokens = {}
    for key, value in read_json(config_path).items():
        if not key.endswith("_token"):
            continue
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            value = value["content"]
        if isinstance(value, str):
            tokens[key] = value
    return tokens


def check_messages(messages: object) -> list[dict[str, Any]]:
    """`messages` as a list of {"role": str, "content": ...} dicts; ValueError naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("must be a non-empty list of messages")
    if len(messages) > MAX_MESSAGES:
        raise ValueError(f"{len(messages)} messages exceed {MAX_MESSAGES}")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ValueError(f"message {index} must be an object with a string 'role'")
        if "content" in message and not isinstance(message["content"], str | list | type(None)):
            raise ValueError(f"message {index}: 'content' must be a string or a list of parts")
    return messages


def render_chat(
    template: str,
    messages: list[dict[str, Any]],
    special: dict[str, str] | None = None,
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """The conversation rendered as transformers' apply_chat_template(tokenize=False) renders it."""
    try:
        compiled = compiled_template(template)
        context = {"tools": None, "documents": None, **(special or {}), **extra}  # as transformers passes them
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **context)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"the chat template fails to render: {exc}") from None
