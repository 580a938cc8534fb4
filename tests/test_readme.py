"""The README's CLI synopses match `--help`: every option of every command appears in its synopsis
(one spelling is enough), and the synopsis names no option the command lacks."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from tests.nld.test_cli_help import commands

README = Path(__file__).resolve().parents[1] / "README.md"


def synopses() -> dict[str, set[str]]:
    """{command: the options its synopsis lines name}, from the README's code blocks."""
    found: dict[str, set[str]] = {}
    current = None
    in_block = False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            in_block, current = not in_block, None
            continue
        if not in_block:
            continue
        match = re.match(r"^(nld-build|nld [a-z-]+)\b", line)
        if match:
            current = match.group(1)
            found.setdefault(current, set())
        elif not line.startswith(" "):
            current = None
        if current is not None:
            found[current] |= set(re.findall(r"(--[a-z][a-z0-9-]*)", line))
    return found


@pytest.mark.parametrize("name", sorted(commands()))
def test_synopsis_matches_help(name: str) -> None:
    documented = synopses()
    assert name in documented, f"README has no synopsis for {name}"
    parser = commands()[name]
    actions = [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]
    missing = [a.option_strings[0] for a in actions if not set(a.option_strings) & documented[name]]
    known = {option for a in actions for option in a.option_strings}
    unknown = sorted(documented[name] - known)
    assert not missing and not unknown, f"{name}: README lacks {missing}; README names unknown {unknown}"
