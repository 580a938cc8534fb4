"""The text corpus that needs no download: the Python standard library's own source, split by file into
train / held-out. Evaluation (`nld eval`), calibration (`nld quantize`) and the tiny model's training
all draw from it.

Every machine with CPython has this data. The split is a hash of each file's path relative to the stdlib
root, so it is the same everywhere; the corpus itself is the running interpreter's stdlib (record its
version with the model: another version is other data).
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

EXCLUDED_PARTS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__"})
HELD_OUT_EVERY = 20  # one file in 20 (by path hash) never reaches training
# Generated codec tables (encodings/cp*.py ...): trainable, but as evaluation prompts they are trivially
# predictable and inflate acceptance figures, so evaluation draws no prompts from them.
EVAL_EXCLUDED_PARTS = frozenset({"encodings"})


@dataclass(frozen=True)
class Corpus:
    root: Path
    train: list[Path]
    held_out: list[Path]
    python_version: str


def is_held_out(relative: str) -> bool:
    """Whether a stdlib file (path relative to the stdlib root) belongs to the held-out split."""
    return int(hashlib.sha1(relative.encode()).hexdigest(), 16) % HELD_OUT_EVERY == 0


def stdlib_corpus(root: Path | None = None) -> Corpus:
    """The .py files of the standard library (tests, IDLE and site-packages excluded), split by path hash."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not EXCLUDED_PARTS & set(p.relative_to(root).parts))
    if not files:
        raise FileNotFoundError(f"no Python sources under {root}")
    train = [p for p in files if not is_held_out(str(p.relative_to(root)))]
    held_out = [p for p in files if is_held_out(str(p.relative_to(root)))]
    return Corpus(root, train, held_out, platform.python_version())


def evaluation_files(corpus: Corpus) -> list[Path]:
    """Held-out files that evaluation prompts are drawn from (codec tables excluded)."""
    return [p for p in corpus.held_out if not EVAL_EXCLUDED_PARTS & set(p.relative_to(corpus.root).parts)]


def read_source(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def sample_windows(stream: torch.Tensor, rows: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`rows` random windows of `length` tokens from a token stream, as [rows, length]."""
    starts = torch.randint(0, len(stream) - length, (rows,), generator=generator)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])
