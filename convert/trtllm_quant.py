"""The TRT-LLM checkpoint of a unified quantized HF checkpoint (`nld quantize`): quantization fields in
config.json and the quantized tensors of every rank, named as ModelOpt's TRT-LLM export names them.

Per TRT-LLM linear (`attention.qkv`, `attention.dense`, `mlp.fc`, `mlp.gate`, `mlp.proj`):
- FP8: `weight` float8_e4m3fn, `weights_scaling_factor` and `activation_scaling_factor` (fp32 [1]);
- W4A16_AWQ: `weight` int8 [out/2, in] (two signed 4-bit values per byte, ModelOpt's packing),
  `weights_scaling_factor` fp32 [out, in/group], `prequant_scaling_factor` [in] in the model dtype;
- with an FP8 KV cache, per layer `attention.kv_cache_scaling_factor` = max(k_scale, v_scale).
Tensor parallelism splits the quantized tensors the way convert/trtllm.py splits float ones (4-bit
values are unpacked, split and repacked). Linears that TRT-LLM fuses must share their scales, which
`nld quantize` guarantees; a checkpoint where they differ is refused, naming the layer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from nld.checkpoint import (
    FILE_DTYPES,
    QUANT_CONFIG_FILE,
    QUANTIZED_FILE_DTYPES,
    LazyWeights,
    _open,
    _weight_files,
    expected_shapes,
    read_json,
)
from nld.config import NLDConfig
from nld.errors import CheckpointError, NLDError
from nld.quantize.hf_format import pack_int4, unpack_int4

Maker = Callable[[], torch.Tensor]

# TRT-LLM linear -> (the NLD linears it is made of, whether tensor parallelism splits its in-features).
TRTLLM_LINEARS: dict[str, tuple[tuple[str, ...], bool]] = {
    "attention.qkv": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), False),
    "attention.dense": (("self_attn.o_proj",), True),
    "mlp.fc": (("mlp.gate_proj",), False),
    "mlp.gate": (("mlp.up_proj",), False),
    "mlp.proj": (("mlp.down_proj",), True),
}
# Scalar scales a fused TRT-LLM linear takes from its NLD linears (which must agree), per algorithm.
SHARED_SCALARS = {
    "FP8": {"weights_scaling_factor": "weight_scale", "activation_scaling_factor": "input_scale"},
    "W4A16_AWQ": {},
}
SUPPORTED_ALGORITHMS = tuple(SHARED_SCALARS)


class RawWeights(LazyWeights):
    """Every tensor of a checkpoint as stored (quantized ones included), read from disk on demand; unlike
    LazyWeights, names and shapes are not the float layout's (check_quantized_weights checks them)."""

    def __init__(self, model_dir: Path) -> None:
        self.files = _weight_files(model_dir)
        known = FILE_DTYPES | QUANTIZED_FILE_DTYPES
        self.specs = {}
        for name, path in sorted(self.files.items()):
            with _open(path) as handle:
                view = handle.get_slice(name)
                if view.get_dtype() not in known:
                    raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {view.get_dtype()}")
                self.specs[name] = (tuple(view.get_shape()), known[view.get_dtype()])

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.files:
            raise CheckpointError(f"tensor '{name}' is missing from the quantized checkpoint")
        return super().__getitem__(name)


def read_quantization(model_dir: Path) -> dict | None:
    """The `quantization` object of a unified quantized checkpoint, or None for a plain one."""
    path = Path(model_dir) / QUANT_CONFIG_FILE
    if not path.exists():
        return None
    quantization = read_json(path).get("quantization")
    if not isinstance(quantization, dict):
        raise CheckpointError(f"{path}: no 'quantization' object")
    if quantization.get("quant_algo") not in SUPPORTED_ALGORITHMS:
        raise CheckpointError(
            f"{path}: quant_algo {quantization.get('quant_algo')!r} has no TRT-LLM export here "
            f"(supported: {', '.join(SUPPORTED_ALGORITHMS)})"
        )
    return quantization


def trtllm_quantization(quantization: dict) -> dict:
    """The `quantization` block of TRT-LLM's config.json for a unified checkpoint's quantization."""
    block = {
        "quant_algo": quantization["quant_algo"],
        "kv_cache_quant_algo": quantization.get("kv_cache_quant_algo"),
        "exclude_modules": ["lm_head"],  # the diffusion head stays 16-bit
    }
    if quantization["quant_algo"] == "W4A16_AWQ":
        block |= {"group_size": quantization["group_size"], "has_zero_point": False, "pre_quant_scale": True}
    return block


def _stored_shapes(algorithm: str, shape: tuple[int, ...], group: int | None) -> dict[str, tuple[int, ...]]:
    """How a float [out, in] weight is stored by `algorithm`: tensor suffix -> shape."""
    out, features = shape
    if algorithm == "FP8":
        return {"weight": (out, features)}
    return {"weight": (out // 2, features), "weight_scale": (out, features // (group or 1))}


def check_quantized_weights(weights: RawWeights, config: NLDConfig, quantization: dict, tp: int, where: Path) -> None:
    """Refuse, before writing: quantized tensors of the wrong shape, scales a fused TRT-LLM linear cannot
    take, and tensor-parallel splits that would cut int4 blocks."""
    algorithm = quantization["quant_algo"]
    group = quantization.get("group_size")
    expected = expected_shapes(config)
    for index in range(config.num_hidden_layers):
        for linear, (sources, splits_input) in TRTLLM_LINEARS.items():
            names = [f"encoder.layers.{index}.{source}" for source in sources]
            for name in names:
                for suffix, shape in _stored_shapes(algorithm, expected[f"{name}.weight"], group).items():
                    found = weights.specs.get(f"{name}.{suffix}", (None,))[0]
                    if found != shape:
                        raise CheckpointError(
                            f"{where}: tensor '{name}.{suffix}' has shape {found}, expected {shape} for {algorithm}"
                        )
            shared = list(SHARED_SCALARS[algorithm].values())
            shared += ["pre_quant_scale"] if algorithm == "W4A16_AWQ" and not splits_input else []
            for suffix in shared:
                first = weights[f"{names[0]}.{suffix}"]
                if not all(torch.equal(weights[f"{name}.{suffix}"], first) for name in names[1:]):
                    raise NLDError(
                        f"{', '.join(names)} make TRT-LLM's fused {linear} but their {suffix} differ; "
                        f"re-quantize with `nld quantize`, which gives fused linears one set of scales"
                    )
            if algorithm == "W4A16_AWQ" and splits_input and tp > 1:
                blocks = weights[f"{names[0]}.weight_scale"].shape[1]
                if blocks % tp:
                    raise NLDError(
                        f"tp {tp} splits {names[0]}'s in-features, but its {blocks} int4 blocks of {group} "
                        f"do not divide by {tp}"
                    )


def _scalar(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float().reshape(1)


@dataclass(frozen=True)
class RankSplit:
    """What the float export's split functions take: the model config, the tp size and this rank."""

    config: NLDConfig
    tp: int
    rank: int


def _linear_makers(
    split: Callable,
    stem: str,
    prefix: str,
    weights: Mapping[str, torch.Tensor],
    quantization: dict,
    rank: RankSplit,
    dtype: torch.dtype,
) -> dict[str, Maker]:
    """One TRT-LLM linear's quantized tensors for one rank; `split` cuts NLD tensors into this rank's
    part exactly as the float export does (convert/trtllm.py's LAYER_EXPORTS)."""
    algorithm = quantization["quant_algo"]
    sources, splits_input = TRTLLM_LINEARS[stem.split(".", 3)[-1]]
    first = f"{prefix}{sources[0]}"

    def part(transform: Callable[[torch.Tensor], torch.Tensor], suffix: str = "") -> torch.Tensor:
        fetch = lambda name: transform(weights[f"{prefix}{name}{suffix}"])  # noqa: E731
        return split(fetch, rank.config, rank.tp, rank.rank)

    makers: dict[str, Maker] = {}
    if algorithm == "FP8":
        makers[f"{stem}.weight"] = lambda: part(lambda t: t.view(torch.uint8)).view(torch.float8_e4m3fn)
        for trtllm_name, ours in SHARED_SCALARS[algorithm].items():
            makers[f"{stem}.{trtllm_name}"] = lambda ours=ours: _scalar(weights[f"{first}.{ours}"])
        return makers

    def prequant() -> torch.Tensor:
        scale = weights[f"{first}.pre_quant_scale"]
        return (scale.chunk(rank.tp)[rank.rank] if splits_input else scale).to(dtype)

    makers[f"{stem}.weight"] = lambda: pack_int4(part(unpack_int4)).view(torch.int8)
    makers[f"{stem}.weights_scaling_factor"] = lambda: part(lambda t: t, "_scale").float()
    makers[f"{stem}.prequant_scaling_factor"] = prequant
    return makers


def quantized_layer_makers(
    layer_exports: Mapping[str, Callable],
    weights: Mapping[str, torch.Tensor],
    quantization: dict,
    rank: RankSplit,
    dtype: torch.dtype,
) -> dict[str, Maker]:
    """Every quantized tensor of one rank: the linears of each layer, and the KV-cache scales."""
    makers: dict[str, Maker] = {}
    for index in range(rank.config.num_hidden_layers):
        prefix = f"encoder.layers.{index}."
        for linear in TRTLLM_LINEARS:
            stem = f"transformer.layers.{index}.{linear}"
            makers |= _linear_makers(
                layer_exports[f"{linear}.weight"], stem, prefix, weights, quantization, rank, dtype
            )
        if quantization.get("kv_cache_quant_algo") == "FP8":
            k, v = f"{prefix}self_attn.k_proj.k_scale", f"{prefix}self_attn.v_proj.v_scale"
            makers[f"transformer.layers.{index}.attention.kv_cache_scaling_factor"] = lambda k=k, v=v: _scalar(
                torch.maximum(weights[k].float(), weights[v].float())
            )
    return makers


# TRT-LLM config field -> (NLD config attribute or hf_quant_config field, how to read it).
CONFIG_CHECKS: dict[str, Callable[[NLDConfig, dict], object]] = {
    "vocab_size": lambda c, q: c.vocab_size,
    "hidden_size": lambda c, q: c.hidden_size,
    "num_hidden_layers": lambda c, q: c.num_hidden_layers,
    "num_attention_heads": lambda c, q: c.num_attention_heads,
    "num_key_value_heads": lambda c, q: c.num_key_value_heads,
    "head_size": lambda c, q: c.head_dim,  # ModelOpt's own TRT-LLM export gets this wrong for INT4
    "intermediate_size": lambda c, q: c.intermediate_size,
    "norm_epsilon": lambda c, q: c.rms_norm_eps,
    "max_position_embeddings": lambda c, q: c.max_position_embeddings,
    "rotary_base": lambda c, q: c.rope.theta,  # dropped by ModelOpt's export under transformers 5
    "quantization.quant_algo": lambda c, q: q.get("quant_algo"),
    "quantization.kv_cache_quant_algo": lambda c, q: q.get("kv_cache_quant_algo"),
    "quantization.group_size": lambda c, q: q.get("group_size"),
}


def check_trtllm_config(trtllm: dict, config: NLDConfig, quantization: dict | None, where: Path) -> None:
    """Cross-check a TRT-LLM config.json field by field against the model config and its quantization."""
    quantization = quantization or {"quant_algo": None, "kv_cache_quant_algo": None}
    for field, expected_of in CONFIG_CHECKS.items():
        node: object = trtllm
        for part in field.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        expected = expected_of(config, quantization)
        if node != expected:
            raise NLDError(f"{where}: TRT-LLM config field '{field}' is {node!r}, but the model says {expected!r}")


def write_checked_config(path: Path, trtllm: dict, config: NLDConfig, quantization: dict | None) -> None:
    check_trtllm_config(trtllm, config, quantization, path)
    path.write_text(json.dumps(trtllm, indent=2) + "\n")
