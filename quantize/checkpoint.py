"""`nld quantize` as a library function: load, calibrate in both attention modes, export (unified HF)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from nld.errors import NLDError
from nld.model import NLDTransformer
from nld.quantize.export_hf import export_quantized_hf
from nld.quantize.ptq import prepare, quantize_model


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
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise NLDError(f"{output} exists and is not empty; pass --force to replace it")
    run = prepare(Path(model_dir), precision, calibration, samples, seq_len, device)
    started = time.perf_counter()
    model = NLDTransformer.from_checkpoint(run.checkpoint, torch.float32, device)
    model = quantize_model(model, run.recipe, run.windows, kv_cache)
    log(f"calibrated {samples} x {seq_len} tokens in {time.perf_counter() - started:.1f} s; exporting ...")
    return export_quantized_hf(model.cpu(), run.recipe, Path(model_dir), output, kv_cache)
