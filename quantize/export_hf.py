"""Write a ModelOpt-quantized NLD network as a unified Hugging Face checkpoint (format: hf_format.py).

The scales and packed weights come from ModelOpt's own export helpers (`get_weight_scaling_factor`,
`to_quantized_weight`, ...), applied per linear layer of the NLD network (ModelOpt's whole-model HF
exporter expects a transformers model). The folder is written whole or not at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from nld.model import NLDTransformer
from nld.quantize.hf_format import HF_QUANT_CONFIG
from nld.quantize.recipes import KEEP_UNQUANTIZED, MODELOPT_VERSION, QuantRecipe
from nld.staging import staged_directory

COPIED_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
ADAPTER_DIR = "linear_spec_lora"


def _layer_tensors(name: str, module: torch.nn.Module, recipe: QuantRecipe) -> dict[str, torch.Tensor]:
    from modelopt.torch.export import quant_utils

    fmt = quant_utils.get_quantization_format(module)
    weight = module.weight.detach().float()
    scale = quant_utils.get_weight_scaling_factor(module)
    scale_2 = quant_utils.get_weight_scaling_factor_2(module)  # NVFP4's per-tensor scale of the block scales
    tensors = {
        f"{name}.weight": quant_utils.to_quantized_weight(weight, scale, fmt, scale_2, recipe.group_size),
        # NVFP4 block scales are float8 themselves; the other formats' scales are written as fp32
        f"{name}.weight_scale": scale if scale.dtype == torch.float8_e4m3fn else scale.float(),
    }
    if scale_2 is not None:
        tensors[f"{name}.weight_scale_2"] = scale_2.float()
    input_scale = quant_utils.get_activation_scaling_factor(module)
    if input_scale is not None:
        tensors[f"{name}.input_scale"] = input_scale.float()
    pre_quant = quant_utils.get_prequant_scaling_factor(module)
    if pre_quant is not None:
        tensors[f"{name}.pre_quant_scale"] = pre_quant.to(torch.float16)
    output_quantizer = getattr(module, "output_quantizer", None)
    if output_quantizer is not None and output_quantizer.is_enabled:  # FP8 KV cache on k_proj / v_proj
        kind = name.rsplit(".", 1)[-1][0]  # "k" or "v"
        tensors[f"{name}.{kind}_scale"] = quant_utils.get_scaling_factor(output_quantizer).float()
    return tensors


def quantized_state_dict(model: NLDTransformer, recipe: QuantRecipe, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor of the unified checkpoint: quantized linears with their scales, the rest in `dtype`."""
    tensors: dict[str, torch.Tensor] = {}
    quantized_layers = set()
    for name, module in model.named_modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is not None and quantizer.is_enabled:
            tensors.update(_layer_tensors(name, module, recipe))
            quantized_layers.add(name)
    for name, tensor in model.state_dict().items():
        owner = name.rsplit(".", 1)[0]
        if "quantizer" in name or "lora" in name or owner in quantized_layers:
            continue
        tensors[name] = tensor.detach().to(dtype)
    return {name: tensor.contiguous() for name, tensor in tensors.items()}


def quant_config(recipe: QuantRecipe, kv_cache: str | None) -> dict:
    """The content of hf_quant_config.json."""
    return {
        "producer": {"name": "modelopt", "version": MODELOPT_VERSION},
        "quantization": {
            "quant_algo": recipe.quant_algo,
            "kv_cache_quant_algo": kv_cache.upper() if kv_cache else None,
            "group_size": recipe.group_size,
            "exclude_modules": [pattern.strip("*") for pattern in KEEP_UNQUANTIZED],
        },
    }


def export_quantized_hf(
    model: NLDTransformer,
    recipe: QuantRecipe,
    source: Path,
    output: Path,
    kv_cache: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
) -> Path:
    """Write `model` (quantized by `quantize_model`) to `output` next to the source's other files."""
    source = Path(source)
    config = json.loads((source / "config.json").read_text())
    hf_quant = quant_config(recipe, kv_cache)
    config["quantization_config"] = {"quant_method": "modelopt", **hf_quant["quantization"]}
    with staged_directory(output) as staging:
        save_file(quantized_state_dict(model, recipe, dtype), str(staging / "model.safetensors"))
        (staging / HF_QUANT_CONFIG).write_text(json.dumps(hf_quant, indent=2) + "\n")
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in COPIED_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, staging / name)
        if (source / ADAPTER_DIR).is_dir():  # the draft LoRA stays 16-bit
            shutil.copytree(source / ADAPTER_DIR, staging / ADAPTER_DIR)
    return Path(output)
