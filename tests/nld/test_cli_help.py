"""`--help` of every `nld` command and of `nld-build` shows each option's default, and the token-count
option takes both spellings everywhere (`--max-new-tokens` and `--max-tokens`)."""

from __future__ import annotations

import argparse

import pytest

from nld.builder.cli import build_parser as build_builder_parser
from nld.cli import build_parser


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {f"nld {name}": command for name, command in sub.choices.items()} | {"nld-build": build_builder_parser()}


@pytest.mark.parametrize("name", sorted(commands()))
def test_help_shows_every_default(name: str) -> None:
    parser = commands()[name]
    text = "".join(parser.format_help().split())  # argparse wraps lines, also at hyphens
    for action in parser._actions:
        default = action.default
        if not action.option_strings or any(default is nothing for nothing in (None, False, argparse.SUPPRESS)):
            continue
        assert f"(default:{''.join(str(default).split())})" in text, f"{name} {action.option_strings[0]}"


@pytest.mark.parametrize("name", ["generate", "eval", "bench", "client", "quant-report"])
def test_both_token_count_spellings(name: str) -> None:
    parser = commands()[f"nld {name}"]
    needed = {"generate": ["--prompt", "x"], "client": ["--prompt", "x"], "quant-report": ["--precision", "fp8"]}
    for spelling in ("--max-new-tokens", "--max-tokens"):
        args = parser.parse_args([*needed.get(name, []), spelling, "7"])
        assert 7 in (getattr(args, "max_new_tokens", None), getattr(args, "max_tokens", None)), (name, spelling)
