"""Quantization recipes as data: which ModelOpt config each precision uses, what stays unquantized,
what the exported checkpoints call it, and what the format needs from the model and the host.

Pinned to the ModelOpt version the recipes are tested with (`MODELOPT_VERSION`); another version is
refused, since config contents and calibration behaviour change between releases.
"""

from __future__ import annotations

import copy
import importlib.metadata
from dataclasses import dataclass

import torch

from nld.config import NLDConfig
from nld.errors import NLDError

MODELOPT_VERSION = "0.47.0"
# NLD module names ModelOpt's defaults do not know: the untied diffusion head and the embeddings stay
# 16-bit (as the lm_head does in ModelOpt's own recipes).
KEEP_UNQUANTIZED = ("*diffusion_head*", "*embed_tokens*")


@dataclass(frozen=True)
class QuantRecipe:
    name: str
    description: str
    modelopt_config: str  # attribute of modelopt.torch.quantization
    quant_algo: str  # hf_quant_config.json / TRT-LLM `quant_algo`
    group_size: int | None  # weight block along in-features, None for per-tensor scales
    needs_cuda: bool  # calibration kernels exist only for CUDA


RECIPES: dict[str, QuantRecipe] = {
    recipe.name: recipe
    for recipe in (
        QuantRecipe(
            "fp8", "FP8 (e4m3) weights and activations, per-tensor scales", "FP8_DEFAULT_CFG", "FP8", None, False
        ),
        QuantRecipe(
            "int4-awq", "INT4 weights (AWQ, blocks of 128), 16-bit activations", "INT4_AWQ_CFG", "W4A16_AWQ", 128, False
        ),
        QuantRecipe("nvfp4", "NVFP4 weights and activations (blocks of 16)", "NVFP4_DEFAULT_CFG", "NVFP4", 16, True),
    )
}
# --kv-cache fp8: ModelOpt's FP8 KV settings, placed on the K and V projections' outputs (the values the
# cache holds, before RoPE on K): ModelOpt's own `*[kv]_bmm_quantizer` exist only in attention modules it
# patches, which the NLD step network's attention is not.
KV_CACHE_RECIPES = {"fp8": "FP8_KV_CFG"}
KV_CACHE_QUANTIZERS = "*[kv]_proj.output_quantizer"


def get_recipe(name: str) -> QuantRecipe:
    if name not in RECIPES:
        raise NLDError(f"unknown quantization precision '{name}': choose one of {', '.join(RECIPES)}")
    return RECIPES[name]


def check_modelopt() -> None:
    """Refuse a missing or different ModelOpt, naming the version the recipes are pinned to."""
    try:
        found = importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        raise NLDError(f"quantization needs nvidia-modelopt=={MODELOPT_VERSION} (pip install it)") from None
    if found != MODELOPT_VERSION:
        raise NLDError(f"nvidia-modelopt {found} is installed; the recipes are pinned to {MODELOPT_VERSION}")


def linear_in_features(config: NLDConfig) -> dict[str, int]:
    """In-features of each decoder linear layer kind (layer 0's names; all layers share the shapes)."""
    attention_width = config.num_attention_heads * config.head_dim
    prefix = "encoder.layers.0"
    return {
        f"{prefix}.self_attn.q_proj": config.hidden_size,
        f"{prefix}.self_attn.k_proj": config.hidden_size,
        f"{prefix}.self_attn.v_proj": config.hidden_size,
        f"{prefix}.self_attn.o_proj": attention_width,
        f"{prefix}.mlp.gate_proj": config.hidden_size,
        f"{prefix}.mlp.up_proj": config.hidden_size,
        f"{prefix}.mlp.down_proj": config.intermediate_size,
    }


def check_recipe(recipe: QuantRecipe, config: NLDConfig, device: str) -> None:
    """Everything that rules a recipe out for this model on this host, before any work."""
    if recipe.needs_cuda and (torch.device(device).type != "cuda" or not torch.cuda.is_available()):
        raise NLDError(
            f"{recipe.name} calibration needs a CUDA GPU (ModelOpt's {recipe.name} kernels are CUDA-only); "
            f"this host has none or --device is '{device}'"
        )
    if recipe.group_size:
        for layer, features in linear_in_features(config).items():
            if features % recipe.group_size:
                raise NLDError(
                    f"{recipe.name} packs weights in blocks of {recipe.group_size} in-features: {layer} has "
                    f"{features} (and so does that layer in every block)"
                )


def modelopt_config(recipe: QuantRecipe, kv_cache: str | None = None) -> dict:
    """The ModelOpt quantization config of a recipe: its base config, our unquantized modules, and the
    KV-cache quantizers when asked."""
    import modelopt.torch.quantization as mtq

    config = copy.deepcopy(getattr(mtq, recipe.modelopt_config))
    entries = config["quant_cfg"]
    if kv_cache is not None:
        if kv_cache not in KV_CACHE_RECIPES:
            raise NLDError(f"unknown KV-cache quantization '{kv_cache}': choose one of {', '.join(KV_CACHE_RECIPES)}")
        kv_entries = [e for e in getattr(mtq, KV_CACHE_RECIPES[kv_cache])["quant_cfg"] if "cfg" in e]
        entries += [{**entry, "quantizer_name": KV_CACHE_QUANTIZERS} for entry in kv_entries]
    entries += [{"quantizer_name": pattern, "enable": False} for pattern in KEEP_UNQUANTIZED]
    return config
