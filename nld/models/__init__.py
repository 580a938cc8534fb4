"""Models shipped with the package: `tiny`, the built-in default (trained by scripts/train_tiny.py)."""

from __future__ import annotations

from pathlib import Path

from nld.errors import NLDError

BUILTIN_MODEL = Path(__file__).resolve().parent / "tiny"


def default_model_dir() -> Path:
    """The built-in tiny model's folder; an error that says how to get it when it is absent."""
    if not (BUILTIN_MODEL / "config.json").exists():
        raise NLDError(
            f"the built-in model is missing at {BUILTIN_MODEL}: pass --model DIR or run scripts/train_tiny.py"
        )
    return BUILTIN_MODEL
