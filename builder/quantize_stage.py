"""The quantize stage of nld-build: ModelOpt PTQ of the checkpoint, calibrated in both attention modes,
into `quantized/` (a unified HF checkpoint), which the later stages build from.

Which 16-bit type the unquantized parts (embeddings, norms, head, activations of weight-only formats)
use is a table here, as is what nld-build can build end to end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from nld.builder.stages import StageRecord
from nld.config import NLDConfig
from nld.errors import NLDError
from nld.quantize.checkpoint import quantize_checkpoint
from nld.quantize.recipes import KV_CACHE_RECIPES, check_modelopt, check_recipe, get_recipe
from nld.tokenizer import NLDTokenizer

# Build precision -> the 16-bit type of everything that is not quantized.
COMPUTE_PRECISION = {"bf16": "bf16", "fp16": "fp16", "fp8": "bf16", "int4-awq": "bf16", "nvfp4": "bf16"}
# Quantized precisions whose Q/DQ network and TRT-LLM checkpoint nld-build writes.
BUILDABLE_QUANTIZED = ("fp8", "int4-awq")
QUANTIZED_DIR = "quantized"
Log = Callable[[str], None]


def is_quantized(precision: str) -> bool:
    return COMPUTE_PRECISION.get(precision, precision) != precision


def check_quantization(
    model: Path, precision: str, config: NLDConfig, calibration: Path | None, kv_cache: str | None, device: str = "cpu"
) -> None:
    """Everything that rules out quantizing for this build, before any work."""
    recipe = get_recipe(precision)
    check_modelopt()
    check_recipe(recipe, config, device)  # nvfp4 without CUDA, INT4 blocks the dims cannot fill
    if precision not in BUILDABLE_QUANTIZED:
        raise NLDError(
            f"nld-build does not build {precision} networks yet (buildable: {', '.join(BUILDABLE_QUANTIZED)}); "
            f"`nld quantize --precision {precision}` writes the checkpoint"
        )
    if kv_cache is not None and kv_cache not in KV_CACHE_RECIPES:
        raise NLDError(f"unknown --kv-cache '{kv_cache}': choose one of {', '.join(KV_CACHE_RECIPES)}")
    if calibration is not None and not Path(calibration).is_file():
        raise NLDError(f"--calib {calibration}: no such file")
    if NLDTokenizer.from_dir(model) is None:
        raise NLDError(f"{model}: no tokenizer.json; {precision} calibration text must be tokenized")


def quantize_stage(
    model: Path,
    precision: str,
    staging: Path,
    calibration: Path | None,
    samples: int,
    kv_cache: str | None,
    log: Log,
) -> tuple[StageRecord, Path]:
    """Quantize `model` into `staging/quantized`; returns the record and the checkpoint to build from."""
    if not is_quantized(precision):
        return StageRecord("quantize", False, reason=f"not needed for {precision}"), model
    began = time.perf_counter()
    log(f"quantizing to {precision} (ModelOpt, {samples} calibration windows) ...")
    out = quantize_checkpoint(
        model, precision, staging / QUANTIZED_DIR, calibration, samples, kv_cache=kv_cache, log=log
    )
    files = sorted(str(path.relative_to(staging)) for path in out.rglob("*") if path.is_file())
    details = {
        "recipe": precision,
        "calibration": str(calibration) if calibration else "built-in (training split of the tiny model's corpus)",
        "samples": samples,
        "kv_cache": kv_cache,
    }
    return StageRecord("quantize", True, files, seconds=time.perf_counter() - began, details=details), out
