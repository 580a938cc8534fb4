"""Benchmark prompt sets: the built-in one (SPEED-Bench's categories, written for the built-in model's
code corpus) or a user JSONL with a "prompt" field (and optionally "category") per line."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nld.errors import NLDError
from nld.jsonl import jsonl_records

BUILT_IN = "prompts.jsonl"


@dataclass(frozen=True)
class BenchPrompt:
    category: str
    text: str


def load_prompts(path: Path | None = None) -> list[BenchPrompt]:
    """The prompts of `path` (JSONL), or the built-in set; a bad line is named."""
    if path is None:
        text = (resources.files("nld.bench") / BUILT_IN).read_text()
        where = f"nld/bench/{BUILT_IN}"
    else:
        if not Path(path).is_file():
            raise NLDError(f"--prompts {path}: no such file")
        text = Path(path).read_text(encoding="utf-8")
        where = str(path)
    prompts = []
    for number, entry in jsonl_records(text, where):
        if not isinstance(entry.get("prompt"), str) or not entry["prompt"]:
            raise NLDError(f"{where}, line {number}: needs a non-empty string field 'prompt'")
        prompts.append(BenchPrompt(str(entry.get("category", "user")), entry["prompt"]))
    if not prompts:
        raise NLDError(f"{where}: no prompts")
    return prompts
