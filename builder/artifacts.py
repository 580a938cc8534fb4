"""A build's files as a self-contained, relocatable folder: the served checkpoint copied in, every
artifact hashed into manifest.json, `--verify` re-hashing them, and what `--build OUT` implies for the
commands that run a build (model folder, backend, dtype).

Paths inside OUT are relative (the Triton repository's `model_dir` is `../model` from the repository
root), so OUT can move to another folder or machine and the source checkpoint can go.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nld.errors import NLDError

MANIFEST = "manifest.json"
MODEL_DIR = "model"  # the served checkpoint inside OUT (unquantized builds; quantized ones: quantized/)
SKIPPED_PARTS = frozenset({"expected", "__pycache__"})  # a fixture's golden outputs are not the model


def sha256(path: Path, bar: tqdm | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return digest.hexdigest()


def hash_files(root: Path, names: list[str]) -> dict[str, str]:
    """sha256 of each file under `root`, with a progress bar over the bytes."""
    total = sum((root / name).stat().st_size for name in names)
    with tqdm(total=total, desc="sha256", unit="B", unit_scale=True, disable=total < 1 << 28) as bar:
        return {name: sha256(root / name, bar) for name in names}


def _link_or_copy(source: str, target: str) -> None:
    """A hard link where the file system allows one (no second copy of the weights), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def copy_model(model: Path, target: Path) -> list[str]:
    """The checkpoint's files (weights, config, generation config, tokenizer, chat template, adapter)
    into `target`; returns their paths relative to `target`'s parent."""
    model = Path(model).resolve()
    names = []
    for path in sorted(model.rglob("*")):
        relative = path.relative_to(model)
        if not path.is_file() or SKIPPED_PARTS & set(relative.parts):
            continue
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(str(path), str(target / relative))
        names.append(str(Path(target.name) / relative))
    return names


@dataclass(frozen=True)
class BuildInfo:
    """What a build serves: its checkpoint inside OUT, and the backend and dtype that run it."""

    model_dir: Path
    backend: str
    dtype: str
    artifacts_for_backend: bool  # whether --build carries the backend's artifacts (engines / ONNX)


def read_build(out: str | Path) -> BuildInfo:
    """The BuildInfo of an nld-build output; NLDError naming what is missing."""
    out = Path(out)
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        served = manifest["served"]
    except FileNotFoundError:
        raise NLDError(f"--build {out}: no {MANIFEST}; is it an nld-build output?") from None
    except (KeyError, json.JSONDecodeError) as error:
        raise NLDError(f"--build {out}: {MANIFEST} has no usable 'served' entry ({error})") from None
    return BuildInfo(out / served["model_dir"], served["backend"], served["dtype"], served["artifacts"])


def verify_build(out: str | Path) -> list[str]:
    """Re-hash every artifact manifest.json lists; the problems found (missing or changed files)."""
    out = Path(out)
    try:
        artifacts: dict[str, str] = json.loads((out / MANIFEST).read_text())["artifacts"]
    except FileNotFoundError:
        raise NLDError(f"{out}: no {MANIFEST}; is it an nld-build output?") from None
    except (KeyError, json.JSONDecodeError) as error:
        raise NLDError(f"{out / MANIFEST}: unreadable ({error})") from None
    missing = [name for name in artifacts if not (out / name).is_file()]
    present = [name for name in artifacts if name not in missing]
    digests = hash_files(out, present)
    changed = [name for name in present if digests[name] != artifacts[name]]
    return [f"missing: {name}" for name in missing] + [f"changed: {name}" for name in changed]
