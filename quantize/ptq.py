"""Post-training quantization of the NLD network with ModelOpt (fake-quant in PyTorch).

The quantized model keeps NLDTransformer's step signature, so every backend-level tool (the torch
backend, evaluation, the ONNX export) runs it unchanged; on CPU this is how quantization quality is
measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from nld.checkpoint import Checkpoint, load_checkpoint
from nld.errors import NLDError
from nld.model import NLDTransformer
from nld.quantize.calibration import calibration_loop, calibration_windows, read_texts
from nld.quantize.recipes import QuantRecipe, check_modelopt, check_recipe, get_recipe, modelopt_config
from nld.tokenizer import NLDTokenizer


@dataclass(frozen=True)
class Prepared:
    """What a quantization run starts from, checked: the recipe, the checkpoint, its tokenizer and the
    calibration windows."""

    recipe: QuantRecipe
    checkpoint: Checkpoint
    tokenizer: NLDTokenizer
    windows: torch.Tensor


def prepare(
    model_dir: Path,
    precision: str,
    calibration: Path | None,
    samples: int,
    seq_len: int,
    device: str,
    with_adapter: bool = False,
) -> Prepared:
    """Every check of a quantization run (recipe, ModelOpt version, host, model dims, tokenizer), then
    the calibration windows."""
    recipe = get_recipe(precision)
    check_modelopt()
    checkpoint = load_checkpoint(model_dir, with_adapter=with_adapter)
    check_recipe(recipe, checkpoint.config, device)
    tokenizer = NLDTokenizer.from_dir(model_dir)
    if tokenizer is None:
        raise NLDError(f"{model_dir}: no tokenizer.json; calibration text must be tokenized")
    windows = calibration_windows(tokenizer, read_texts(calibration), samples, seq_len)
    return Prepared(recipe, checkpoint, tokenizer, windows)


def quantize_model(
    model: NLDTransformer,
    recipe: QuantRecipe,
    windows: torch.Tensor,
    kv_cache: str | None = None,
    progress: bool = True,
) -> NLDTransformer:
    """Quantize `model` in place with `recipe`, calibrated on `windows` in both attention modes."""
    check_modelopt()
    device = str(next(model.parameters()).device)
    check_recipe(recipe, model.config, device)
    import modelopt.torch.quantization as mtq

    config = modelopt_config(recipe, kv_cache)
    quantized = mtq.quantize(model, config, calibration_loop(windows, model.config, progress=progress))
    return quantized.eval()
