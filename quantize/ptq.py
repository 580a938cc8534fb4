"""Post-training quantization of the NLD network with ModelOpt (fake-quant in PyTorch).

The quantized model keeps NLDTransformer's step signature, so every backend-level tool (the torch
backend, evaluation, the ONNX export) runs it unchanged; on CPU this is how quantization quality is
measured.
"""

from __future__ import annotations

import torch

from nld.model import NLDTransformer
from nld.quantize.calibration import calibration_loop
from nld.quantize.recipes import QuantRecipe, check_modelopt, check_recipe, modelopt_config


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
