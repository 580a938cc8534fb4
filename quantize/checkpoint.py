"""`nld quantize` as a library function: load, calibrate in both attention modes, export (unified HF)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from nld.checkpoint import load_checkpoint
from nld.errors import NLDError
from nld.model import NLDTransformer
from nld.quantize.calibration import calibration_windows, read_texts
from nld.quantize.export_hf import export_quantized_hf
from nld.quantize.ptq import quantize_model
from nld.quantize.recipes import check_modelopt, check_recipe, get_recipe
from nld.tokenizer import NLDTokenizer


def quantize_checkpoint(
    model_dir: Path,
    precision: str,
    output: Path,
    calibration: Path | None = None,
    samples: int = 64,
    seq_len: int = 256,
    kv_cache: str | None = None,
    device: str = "cpu",
    force: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Quantize the checkpoint in `model_dir` with `precision` and write it to `output` (atomically)."""
    recipe = get_recipe(precision)
    check_modelopt()
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise NLDError(f"{output} exists and is not empty; pass --force to replace it")
    checkpoint = load_checkpoint(model_dir, with_adapter=False)
    check_recipe(recipe, checkpoint.config, device)
    tokenizer = NLDTokenizer.from_dir(model_dir)
    if tokenizer is None:
        raise NLDError(f"{model_dir}: no tokenizer.json; calibration text must be tokenized")
    windows = calibration_windows(tokenizer, read_texts(calibration), samples, seq_len)
    started = time.perf_counter()
    model = NLDTransformer.from_checkpoint(checkpoint, torch.float32, device)
    model = quantize_model(model, recipe, windows, kv_cache)
    log(f"calibrated {samples} x {seq_len} tokens in {time.perf_counter() - started:.1f} s; exporting ...")
    return export_quantized_hf(model.cpu(), recipe, Path(model_dir), output, kv_cache)
