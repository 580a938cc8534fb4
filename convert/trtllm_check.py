"""An independent NumPy forward over an exported TRT-LLM checkpoint: it reads only config.json and the
rank files (FP8 and W4A16_AWQ linears dequantized by TRT-LLM's tensor names), runs each rank's share of
attention and MLP, and sums them as tensor parallelism's all-reduce would. Used to prove an export
reproduces the reference causal logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from nld.config import RopeConfig
from nld.rope import inverse_frequencies


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    rotated = np.concatenate((-x[..., half:], x[..., :half]), axis=-1)
    return x * cos + rotated * sin


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1 + np.exp(-x))


def _signed_nibbles(packed: np.ndarray) -> np.ndarray:
    """int8 [out/2, in], two 4-bit two's-complement values per byte (row 2j low, 2j+1 high) -> [out, in]."""
    raw = packed.view(np.uint8)
    low, high = (raw & 0x0F).astype(np.int64), (raw >> 4).astype(np.int64)
    values = np.stack((low, high), axis=1).reshape(-1, raw.shape[1])
    return np.where(values > 7, values - 16, values)


def _dequantized_rank(path: Path, algorithm: str | None) -> dict[str, np.ndarray]:
    """A rank's tensors in float64; quantized linears as the weights they stand for (scales applied,
    the AWQ input scale folded into the columns)."""
    with safe_open(str(path), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    weights = {}
    for name, tensor in tensors.items():
        stem = name.removesuffix(".weight")
        if algorithm is None or f"{stem}.weights_scaling_factor" not in tensors:
            if not name.endswith("_factor"):
                weights[name] = tensor.double().numpy()
            continue
        scale = tensors[f"{stem}.weights_scaling_factor"].double().numpy()
        if algorithm == "FP8":
            weights[name] = tensor.double().numpy() * scale
        else:  # W4A16_AWQ
            values = _signed_nibbles(tensor.numpy())
            block = values.shape[1] // scale.shape[1]
            prequant = tensors[f"{stem}.prequant_scaling_factor"].double().numpy()
            weights[name] = values * np.repeat(scale, block, axis=1) * prequant[None, :]
    return weights


def causal_logits(checkpoint_dir: str | Path, token_ids: list[int]) -> np.ndarray:
    """Logits [T, vocab] of a causal forward over `token_ids` at positions 0..T-1 (float64)."""
    directory = Path(checkpoint_dir)
    config = json.loads((directory / "config.json").read_text())
    tp = config["mapping"]["tp_size"]
    algorithm = config["quantization"]["quant_algo"]
    ranks = [_dequantized_rank(directory / f"rank{r}.safetensors", algorithm) for r in range(tp)]
    head_dim, eps = config["head_size"], config["norm_epsilon"]
    q_heads = config["num_attention_heads"] // tp
    kv_heads = max(1, config["num_key_value_heads"] // tp)
    rope = RopeConfig(**config["nld"]["rope"])
    inv_freq, factor = inverse_frequencies(rope, head_dim)
    steps = len(token_ids)
    positions = np.arange(steps, dtype=np.float64)
    angles = positions[:, None] * inv_freq.double().numpy()[None, :]
    angles = np.concatenate((angles, angles), axis=-1)
    cos, sin = np.cos(angles)[:, None] * factor, np.sin(angles)[:, None] * factor
    query_scale = np.ones((steps, 1, 1))
    if rope.llama_4_scaling_beta is not None:
        floor = np.floor(positions / rope.original_max_position_embeddings)
        query_scale = (1 + rope.llama_4_scaling_beta * np.log1p(floor))[:, None, None]
    future = np.triu(np.ones((steps, steps), dtype=bool), k=1)

    x = ranks[0]["transformer.vocab_embedding.weight"][np.asarray(token_ids)]
    for layer in range(config["num_hidden_layers"]):
        prefix = f"transformer.layers.{layer}."
        h = _rms_norm(x, ranks[0][prefix + "input_layernorm.weight"], eps)
        attention = np.zeros_like(x)
        for weights in ranks:
            qkv = h @ weights[prefix + "attention.qkv.weight"].T
            q = qkv[:, : q_heads * head_dim].reshape(steps, q_heads, head_dim)
            k = qkv[:, q_heads * head_dim : (q_heads + kv_heads) * head_dim].reshape(steps, kv_heads, head_dim)
            v = qkv[:, (q_heads + kv_heads) * head_dim :].reshape(steps, kv_heads, head_dim)
            q, k = _rotate(q, cos, sin) * query_scale, _rotate(k, cos, sin)
            group = q_heads // kv_heads
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(head_dim)
            scores[:, future] = -np.inf
            probs = np.exp(scores - scores.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            out = np.einsum("hqk,khd->qhd", probs, v).reshape(steps, q_heads * head_dim)
            attention += out @ weights[prefix + "attention.dense.weight"].T  # the all-reduce
        x = x + attention
        h = _rms_norm(x, ranks[0][prefix + "post_layernorm.weight"], eps)
        mlp = np.zeros_like(x)
        for weights in ranks:
            gated = _silu(h @ weights[prefix + "mlp.fc.weight"].T) * (h @ weights[prefix + "mlp.gate.weight"].T)
            mlp += gated @ weights[prefix + "mlp.proj.weight"].T
        x = x + mlp
    x = _rms_norm(x, ranks[0]["transformer.ln_f.weight"], eps)
    return np.concatenate([x @ weights["lm_head.weight"].T for weights in ranks], axis=-1)  # vocab-split head
