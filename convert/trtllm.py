"""Export an NLD checkpoint to a TensorRT-LLM checkpoint (LLaMA-family naming) with tensor-parallel shards.

Layout: `config.json` + `rank{r}.safetensors` for r < tp. Naming follows TRT-LLM's LLaMA converter:
fused `attention.qkv` ([q; k; v] of the rank's heads), `attention.dense`, and TRT-LLM's MLP convention
`mlp.fc` = gate_proj (the SiLU branch), `mlp.gate` = up_proj, `mlp.proj` = down_proj. Column-parallel
weights split their output rows, row-parallel ones their input columns; KV heads are replicated when
tp exceeds their number. `lm_head` (our diffusion head, which serves causal and bidirectional passes)
is split by vocabulary rows; the embedding and norms are replicated. NLD's own fields go under `nld`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from nld.backends.torch_backend import DTYPES
from nld.checkpoint import LazyWeights
from nld.config import NLDConfig, load_config
from nld.convert.safetensors_stream import write_streaming
from nld.convert.trtllm_quant import (
    TRTLLM_LINEARS,
    RankSplit,
    RawWeights,
    check_quantized_weights,
    quantized_layer_makers,
    read_quantization,
    trtllm_quantization,
    write_checked_config,
)
from nld.errors import NLDError
from nld.staging import staged_directory

TP_SIZES = (1, 2, 4, 8)


def check_tp(config: NLDConfig, tp: int) -> None:
    """Refuse a tensor-parallel size the model's shape cannot be split by, naming the dimension."""
    if tp not in TP_SIZES:
        raise NLDError(f"tp must be one of {TP_SIZES}, got {tp}")
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    if heads % tp:
        raise NLDError(f"tp {tp} does not divide num_attention_heads {heads}")
    if kv % tp and tp % kv:
        raise NLDError(f"tp {tp} and num_key_value_heads {kv}: neither divides the other")
    if config.intermediate_size % tp:
        raise NLDError(f"tp {tp} does not divide intermediate_size {config.intermediate_size}")
    if config.vocab_size % tp:
        raise NLDError(f"tp {tp} does not divide vocab_size {config.vocab_size}")


def _rows(tensor: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    return tensor.chunk(tp, dim=0)[rank]


def _columns(tensor: torch.Tensor, tp: int, rank: int) -> torch.Tensor:
    return tensor.chunk(tp, dim=1)[rank]


def _kv_heads(tensor: torch.Tensor, config: NLDConfig, tp: int, rank: int) -> torch.Tensor:
    kv = config.num_key_value_heads
    heads = tensor.view(kv, config.head_dim, -1)
    if kv >= tp:
        return heads.chunk(tp, dim=0)[rank].reshape(-1, tensor.shape[1])
    return heads[rank * kv // tp].reshape(-1, tensor.shape[1])  # replicated: tp/kv ranks share a KV head


def _qkv(layer: Callable[[str], torch.Tensor], config: NLDConfig, tp: int, rank: int) -> torch.Tensor:
    q = _rows(layer("self_attn.q_proj.weight"), tp, rank)
    k = _kv_heads(layer("self_attn.k_proj.weight"), config, tp, rank)
    v = _kv_heads(layer("self_attn.v_proj.weight"), config, tp, rank)
    return torch.cat((q, k, v), dim=0)


# TRT-LLM layer tensor -> how to make one rank's part of it from our layer tensors.
LAYER_EXPORTS: dict[str, Callable[[Callable[[str], torch.Tensor], NLDConfig, int, int], torch.Tensor]] = {
    "input_layernorm.weight": lambda layer, c, tp, r: layer("input_layernorm.weight"),
    "attention.qkv.weight": _qkv,
    "attention.dense.weight": lambda layer, c, tp, r: _columns(layer("self_attn.o_proj.weight"), tp, r),
    "post_layernorm.weight": lambda layer, c, tp, r: layer("post_attention_layernorm.weight"),
    "mlp.fc.weight": lambda layer, c, tp, r: _rows(layer("mlp.gate_proj.weight"), tp, r),
    "mlp.gate.weight": lambda layer, c, tp, r: _rows(layer("mlp.up_proj.weight"), tp, r),
    "mlp.proj.weight": lambda layer, c, tp, r: _columns(layer("mlp.down_proj.weight"), tp, r),
}


Maker = Callable[[], torch.Tensor]


def rank_makers(weights: Mapping[str, torch.Tensor], config: NLDConfig, tp: int, rank: int) -> dict[str, Maker]:
    """For every tensor of one rank of the TRT-LLM checkpoint, a function that makes it from `weights`
    (read lazily: each maker touches only the source tensors it needs)."""
    head = "encoder.embed_tokens.weight" if config.tie_word_embeddings else "diffusion_head.weight"
    makers: dict[str, Maker] = {
        "transformer.vocab_embedding.weight": lambda: weights["encoder.embed_tokens.weight"],
        "transformer.ln_f.weight": lambda: weights["encoder.norm.weight"],
        "lm_head.weight": lambda: _rows(weights[head], tp, rank),
    }
    for index in range(config.num_hidden_layers):

        def layer(name: str, index: int = index) -> torch.Tensor:
            return weights[f"encoder.layers.{index}.{name}"]

        for name, make in LAYER_EXPORTS.items():
            makers[f"transformer.layers.{index}.{name}"] = lambda make=make, layer=layer: make(layer, config, tp, rank)
    return makers


def trtllm_config(config: NLDConfig, tp: int, dtype: str) -> dict:
    """TRT-LLM's config.json for a LLaMA-family model, with the NLD fields under `nld`."""
    rope = config.rope
    scaling = None
    if rope.rope_type == "yarn":
        scaling = {
            "type": "yarn",
            "factor": rope.factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings,
            "beta_fast": rope.beta_fast,
            "beta_slow": rope.beta_slow,
            "mscale": rope.mscale,
            "mscale_all_dim": rope.mscale_all_dim,
        }
    return {
        "architecture": "LlamaForCausalLM",
        "dtype": dtype,
        "logits_dtype": "float32",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_size": config.head_dim,
        "intermediate_size": config.intermediate_size,
        "hidden_act": "silu",
        "norm_epsilon": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "position_embedding_type": "rope_gpt_neox",
        "rotary_base": rope.theta,
        "rotary_scaling": scaling,
        "tie_word_embeddings": False,  # lm_head is written out (the diffusion head)
        "mapping": {"world_size": tp, "tp_size": tp, "pp_size": 1},
        "quantization": {"quant_algo": None, "kv_cache_quant_algo": None},
        "nld": {
            "mask_token_id": config.mask_token_id,
            "block_size": config.block_size,
            "dlm_paradigm": config.dlm_paradigm,
            "eos_token_ids": list(config.eos_token_ids),
            "bos_token_id": config.bos_token_id,
            "rope": asdict(rope),
            "lm_head": "diffusion_head: serves causal (next-token) and bidirectional (masked-token) passes",
        },
    }


def _rank_makers(
    weights: Mapping[str, torch.Tensor],
    config: NLDConfig,
    quantization: dict | None,
    tp: int,
    rank: int,
    target: torch.dtype,
) -> dict[str, Maker]:
    """Makers of one rank's final tensors: float ones cast to `target`, quantized ones as stored."""
    floats = {
        name: (lambda make=make: make().to(target)) for name, make in rank_makers(weights, config, tp, rank).items()
    }
    if quantization is None:
        return floats
    linear_weights = {f".{linear}.weight" for linear in TRTLLM_LINEARS}
    floats = {name: make for name, make in floats.items() if not name.endswith(tuple(linear_weights))}
    return floats | quantized_layer_makers(LAYER_EXPORTS, weights, quantization, RankSplit(config, tp, rank), target)


def export_trtllm(
    model_dir: str | Path, output: str | Path, tp: int = 1, dtype: str = "bfloat16", progress: bool = False
) -> Path:
    """Write the TRT-LLM checkpoint of `model_dir` to `output` (atomically), streaming tensor by tensor:
    at most one source tensor and its converted rank slice are in memory at a time. A unified quantized
    checkpoint (`nld quantize`) gives a quantized TRT-LLM checkpoint (convert/trtllm_quant.py)."""
    if dtype not in DTYPES:
        raise NLDError(f"dtype must be one of {', '.join(DTYPES)}, got '{dtype}'")
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    check_tp(config, tp)
    quantization = read_quantization(model_dir)
    if quantization is None:
        weights: LazyWeights | RawWeights = LazyWeights(model_dir, config)
    else:
        weights = RawWeights(model_dir)
        check_quantized_weights(weights, config, quantization, tp, model_dir)
    target = DTYPES[dtype]
    trtllm = trtllm_config(config, tp, dtype)
    if quantization is not None:
        trtllm["quantization"] = trtllm_quantization(quantization)
    with staged_directory(output) as staging:
        write_checked_config(staging / "config.json", trtllm, config, quantization)
        for rank in range(tp):
            makers = _rank_makers(weights, config, quantization, tp, rank, target)
            planned = {
                name: make()
                for name, make in _rank_makers(weights.meta(), config, quantization, tp, rank, target).items()
            }
            with tqdm(total=len(planned), desc=f"rank {rank + 1}/{tp}", unit="tensor", disable=not progress) as bar:

                def produce(name: str, makers: dict[str, Maker] = makers, bar: tqdm = bar) -> torch.Tensor:
                    bar.update()
                    return makers[name]()

                entries = [(name, tuple(meta.shape), meta.dtype) for name, meta in planned.items()]
                write_streaming(staging / f"rank{rank}.safetensors", entries, produce)
    return Path(output)
