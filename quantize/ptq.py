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

# Linears of one decoder layer that read the same input: deployment fuses them (TRT-LLM's attention.qkv,
# the gated MLP's fc + gate), so they must share the input scale, the AWQ pre-quant scale and, per
# tensor, the weight scale.
FUSED_LINEARS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("mlp.gate_proj", "mlp.up_proj"))


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
    share_fused_scales(quantized)
    return quantized.eval()


def share_fused_scales(model: NLDTransformer) -> None:
    """Give each group of `FUSED_LINEARS` one set of scales, as ModelOpt's own exporters do before
    writing a checkpoint (its `preprocess_linear_fusion`: averaged AWQ scale with the weights
    re-quantized, max of the input and per-tensor weight ranges)."""
    from modelopt.torch.export.quant_utils import preprocess_linear_fusion

    with torch.no_grad():
        for layer in model.encoder.layers:
            for group in FUSED_LINEARS:
                preprocess_linear_fusion([layer.get_submodule(name) for name in group])
