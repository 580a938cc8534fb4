"""The quantized TRT-LLM checkpoint: config fields checked one by one against the source config and its
hf_quant_config, and an independent forward over the (dequantized) shards that reproduces the
quantized checkpoint's causal logits."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nld.checkpoint import load_checkpoint
from nld.convert.trtllm import export_trtllm
from nld.convert.trtllm_check import causal_logits
from nld.errors import NLDError
from nld.model import NLDTransformer

CASES = [("fp8", "fp8"), ("int4-awq", None)]
# TRT-LLM config field -> the source config.json field it must equal.
SOURCE_FIELDS = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_hidden_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "head_size": "head_dim",
    "intermediate_size": "intermediate_size",
    "norm_epsilon": "rms_norm_eps",
    "max_position_embeddings": "max_position_embeddings",
}


@pytest.mark.parametrize(("precision", "kv_cache"), CASES)
def test_config_fields_match_the_source_config_and_quantization(
    tmp_path: Path, quantized_builtin: Callable[..., Path], precision: str, kv_cache: str | None
) -> None:
    source = quantized_builtin(precision, kv_cache)
    out = export_trtllm(source, tmp_path / "trtllm", tp=1, dtype="bfloat16")
    trtllm = json.loads((out / "config.json").read_text())
    config = json.loads((source / "config.json").read_text())
    hf_quant = json.loads((source / "hf_quant_config.json").read_text())["quantization"]
    for ours, theirs in SOURCE_FIELDS.items():
        assert trtllm[ours] == config[theirs], ours
    assert trtllm["rotary_base"] == config["rope_parameters"]["rope_theta"]
    quantization = trtllm["quantization"]
    assert quantization["quant_algo"] == hf_quant["quant_algo"] == {"fp8": "FP8", "int4-awq": "W4A16_AWQ"}[precision]
    assert quantization["kv_cache_quant_algo"] == hf_quant["kv_cache_quant_algo"] == (kv_cache and kv_cache.upper())
    assert quantization.get("group_size") == hf_quant["group_size"]
    assert quantization["exclude_modules"] == ["lm_head"]
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    qkv_rows = (config["num_attention_heads"] + 2 * config["num_key_value_heads"]) * config["head_dim"]
    with safe_open(str(out / "rank0.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
        qkv = handle.get_tensor("transformer.layers.0.attention.qkv.weight")
        assert handle.get_tensor("lm_head.weight").dtype == torch.bfloat16
        if precision == "fp8":
            assert qkv.dtype == torch.float8_e4m3fn and qkv.shape == (qkv_rows, hidden)
            assert sum(n.endswith("attention.kv_cache_scaling_factor") for n in names) == layers
            assert handle.get_tensor("transformer.layers.0.mlp.proj.activation_scaling_factor").shape == (1,)
        else:
            assert qkv.dtype == torch.int8 and qkv.shape == (qkv_rows // 2, hidden)
            scale = handle.get_tensor("transformer.layers.0.attention.qkv.weights_scaling_factor")
            assert scale.shape == (qkv_rows, hidden // 128)
            prequant = handle.get_tensor("transformer.layers.0.mlp.proj.prequant_scaling_factor")
            assert prequant.shape == (config["intermediate_size"],) and prequant.dtype == torch.bfloat16
            assert not any(n.endswith("kv_cache_scaling_factor") for n in names)


def reference_logits(model_dir: Path, token_ids: list[int]) -> np.ndarray:
    """Causal logits of the checkpoint as our loader runs it (dequantized weights, float32)."""
    model = NLDTransformer.from_checkpoint(load_checkpoint(model_dir, with_adapter=False), torch.float32)
    steps = len(token_ids)
    bias = torch.zeros(steps, steps).masked_fill(~torch.ones(steps, steps, dtype=torch.bool).tril(), float("-inf"))
    with torch.no_grad():
        hidden, _ = model(torch.tensor([token_ids]), torch.arange(steps)[None], bias[None, None])
        return model.logits(hidden)[0].double().numpy()


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize(("precision", "kv_cache"), CASES)
def test_sharded_quantized_export_reproduces_the_checkpoint_logits(
    tmp_path: Path, quantized_builtin: Callable[..., Path], precision: str, kv_cache: str | None, tp: int
) -> None:
    source = quantized_builtin(precision, kv_cache)
    out = export_trtllm(source, tmp_path / "trtllm", tp=tp, dtype="float32")
    token_ids = [1, 500, 37, 2048, 9, 77, 1200, 4000, 15, 600, 3, 8]
    expected = reference_logits(source, token_ids)
    np.testing.assert_allclose(causal_logits(out, token_ids), expected, atol=2e-3, rtol=0)


def test_unfusable_checkpoints_are_refused_before_anything_is_written(
    tmp_path: Path, quantized_builtin: Callable[..., Path]
) -> None:
    awq = quantized_builtin("int4-awq")
    with pytest.raises(NLDError, match=r"tp 4 splits encoder\.layers\.0\.self_attn\.o_proj's in-features"):
        export_trtllm(awq, tmp_path / "tp4", tp=4)
    broken = tmp_path / "broken"
    shutil.copytree(quantized_builtin("fp8", "fp8"), broken)
    tensors = load_file(broken / "model.safetensors")
    tensors["encoder.layers.2.self_attn.k_proj.input_scale"] *= 2
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(NLDError, match=r"encoder\.layers\.2\.self_attn\.q_proj, .* attention\.qkv .* input_scale"):
        export_trtllm(broken, tmp_path / "out")
    tensors["encoder.layers.1.mlp.up_proj.weight"] = tensors["encoder.layers.1.mlp.up_proj.weight"][:-1]
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(NLDError, match=r"'encoder\.layers\.1\.mlp\.up_proj\.weight' has shape \(767, 256\)"):
        export_trtllm(broken, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken"]
