"""Chat templates render and tokenize as transformers' apply_chat_template does (transformers is the
oracle), for templates using break, generation blocks, strftime_now, raise_exception, namespaces, tools,
system + multi-turn conversations; and where a checkpoint keeps its template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nld.chat_template import load_chat_template, render_chat
from nld.errors import ConfigError
from nld.models import default_model_dir
from nld.tokenizer import NLDTokenizer

TEMPLATES = Path(__file__).parent / "chat_templates"
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}
CONVERSATIONS = {
    "one user turn": [{"role": "user", "content": "def add(a, b):"}],
    "system + multi-turn": [
        {"role": "system", "content": "You write Python."},
        {"role": "user", "content": "Sort a list."},
        {"role": "assistant", "content": "sorted(xs)"},
        {"role": "user", "content": "  In place?  "},
    ],
    "ended early": [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "never shown", "end": True},
        {"role": "user", "content": "after the end"},
    ],
}
TOOLS = [{"type": "function", "function": {"name": "grep", "parameters": {"type": "object", "properties": {}}}}]


def transformers_render(template: str, messages: list[dict], **extra: object) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template(
        conversations=[messages], chat_template=template, add_generation_prompt=True, **SPECIAL, **extra
    )
    return rendered[0]


def hf_tokenizer(template: str):  # type: ignore[no-untyped-def]
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(default_model_dir() / "tokenizer.json"), chat_template=template, **SPECIAL
    )


def cases() -> list[tuple[str, str]]:
    pairs = []
    for path in sorted(TEMPLATES.glob("*.jinja")):
        for name, messages in CONVERSATIONS.items():
            alternating = [m["role"] for m in messages if m["role"] != "system"][::2]
            if path.stem == "inst_alternating" and (set(alternating) != {"user"} or name == "ended early"):
                continue  # that template refuses these (tested below)
            pairs.append((path.name, name))
    return pairs


@pytest.mark.parametrize(("template_name", "conversation"), cases())
def test_renders_and_tokenizes_as_transformers(template_name: str, conversation: str) -> None:
    template = (TEMPLATES / template_name).read_text()
    messages = CONVERSATIONS[conversation]
    extra = {"tools": TOOLS} if template_name.startswith("chatml") else {}
    ours = render_chat(template, messages, SPECIAL, **extra)
    assert ours == transformers_render(template, messages, **extra)

    tokenizer = NLDTokenizer(NLDTokenizer.from_dir(default_model_dir()).tokenizer, template, SPECIAL)  # type: ignore[union-attr]
    expected = hf_tokenizer(template).apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    expected = expected["input_ids"] if isinstance(expected, dict) or hasattr(expected, "keys") else expected
    assert tokenizer.encode_messages(messages) == list(expected)


def test_raise_exception_stops_the_render_with_its_message() -> None:
    template = (TEMPLATES / "inst_alternating.jinja").read_text()
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(ConfigError, match="Conversation roles must alternate"):
        render_chat(template, messages, SPECIAL)
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        transformers_render(template, messages)


def test_where_a_checkpoint_keeps_its_template(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(default_model_dir(), model)
    assert load_chat_template(model) is None
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{{ 'plain' }}"}))
    assert load_chat_template(model) == "{{ 'plain' }}"
    named = [{"name": "tool_use", "template": "{{ 'tools' }}"}, {"name": "default", "template": "{{ 'named' }}"}]
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": named}))
    assert load_chat_template(model) == "{{ 'named' }}"
    (model / "chat_template.jinja").write_text("{{ 'file' }}")  # transformers >= 4.50 saves it here
    assert load_chat_template(model) == "{{ 'file' }}"
    tokenizer = NLDTokenizer.from_dir(model)
    assert tokenizer is not None and tokenizer.render_messages([{"role": "user", "content": "x"}]) == "file"
