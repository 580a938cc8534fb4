"""The Q/DQ step network of a quantized checkpoint: its weights stay INT4 / FP8 in the graph, and
onnxruntime running it reproduces the quantized model (dequantized weights, FP8-rounded activations)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper
from safetensors.torch import load_file

from nld.backends.onnxruntime_backend import session_options
from nld.checkpoint import load_checkpoint
from nld.errors import NLDError
from nld.model import NLDTransformer
from nld.models import default_model_dir
from nld.onnx_qdq import QDQ_OPSET, export_quantized_step_onnx

CASES = [("int4-awq", None, onnx.TensorProto.INT4), ("fp8", "fp8", onnx.TensorProto.FLOAT8E4M3FN)]
EMBEDDING_SHAPES = {(4096, 256), (256, 4096)}  # embed_tokens and the diffusion head (as MatMul B) stay float


def fp8_round(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """What QuantizeLinear -> DequantizeLinear to FP8 E4M3 (saturating) does to `x`."""
    return (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn).float() * scale


def reference_model(model_dir: Path, kv_cache: str | None) -> NLDTransformer:
    """The quantized checkpoint as our loader runs it, plus the FP8 activation (and KV) rounding."""
    model = NLDTransformer.from_checkpoint(load_checkpoint(model_dir, with_adapter=False), torch.float32)
    tensors = load_file(model_dir / "model.safetensors")
    for name, module in model.named_modules():
        if f"{name}.input_scale" in tensors:
            scale = tensors[f"{name}.input_scale"].float()
            module.register_forward_pre_hook(lambda _, args, scale=scale: (fp8_round(args[0], scale),))
        for kind in ("k", "v"):
            if kv_cache and f"{name}.{kind}_scale" in tensors:
                scale = tensors[f"{name}.{kind}_scale"].float()
                module.register_forward_hook(lambda _, args, out, scale=scale: fp8_round(out, scale))
    return model


def causal_inputs(token_ids: list[int], layers: int, kv_heads: int, head_dim: int) -> dict[str, np.ndarray]:
    steps = len(token_ids)
    feeds = {
        "input_ids": np.array([token_ids], dtype=np.int64),
        "position_ids": np.arange(steps, dtype=np.int64)[None],
        "attention_bias": np.triu(np.full((steps, steps), -np.inf, dtype=np.float32), 1)[None, None],
    }
    for layer in range(layers):
        for part in ("key", "value"):
            feeds[f"past_key_values.{layer}.{part}"] = np.zeros((1, kv_heads, 0, head_dim), dtype=np.float32)
    return feeds


@pytest.mark.parametrize(("precision", "kv_cache", "weight_type"), CASES)
def test_qdq_network_keeps_low_precision_weights_and_matches_the_quantized_model(
    tmp_path: Path, quantized_builtin: Callable[..., Path], precision: str, kv_cache: str | None, weight_type: int
) -> None:
    source = quantized_builtin(precision, kv_cache)
    path = export_quantized_step_onnx(source, tmp_path / "step.onnx", torch.float32)
    model = onnx.load(str(path))
    config = load_checkpoint(source, with_adapter=False).config
    linears = 7 * config.num_hidden_layers
    assert max(opset.version for opset in model.opset_import if opset.domain in ("", "ai.onnx")) >= QDQ_OPSET
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    dequantized_weights = [
        node
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in initializers
        and initializers[node.input[0]].data_type == weight_type
    ]
    assert len(dequantized_weights) == linears
    if precision == "int4-awq":
        assert {attribute.i for node in dequantized_weights for attribute in node.attribute} == {0, 128}
    float_matrices = {
        tuple(tensor.dims)
        for tensor in model.graph.initializer
        if len(tensor.dims) == 2 and tensor.data_type == onnx.TensorProto.FLOAT and not tensor.name.startswith("qdq.")
    }
    assert float_matrices == EMBEDDING_SHAPES  # no dense copy of a quantized weight is left
    activation_qdq = sum(node.op_type == "QuantizeLinear" for node in model.graph.node)
    assert activation_qdq == (linears + 2 * config.num_hidden_layers if precision == "fp8" else 0)

    token_ids = [1, 500, 37, 2048, 9, 77, 1200, 4000, 15, 600, 3, 8]
    session = onnxruntime.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    feeds = causal_inputs(token_ids, config.num_hidden_layers, config.num_key_value_heads, config.head_dim)
    logits = session.run(["logits"], feeds)[0][0]
    reference = reference_model(source, kv_cache)
    steps = len(token_ids)
    bias = torch.from_numpy(feeds["attention_bias"])
    with torch.no_grad():
        hidden, _ = reference(torch.tensor([token_ids]), torch.arange(steps)[None], bias)
        expected = reference.logits(hidden)[0].numpy()
    np.testing.assert_allclose(logits, expected, atol=2e-3, rtol=0)


def test_plain_checkpoints_and_missing_linears_are_refused(tmp_path: Path) -> None:
    with pytest.raises(NLDError, match="not a quantized checkpoint"):
        export_quantized_step_onnx(default_model_dir(), tmp_path / "step.onnx", torch.float32)
    assert not (tmp_path / "step.onnx").exists()


def test_int4_initializers_hold_the_checkpoint_values(tmp_path: Path, quantized_builtin: Callable[..., Path]) -> None:
    from nld.quantize.hf_format import unpack_int4

    source = quantized_builtin("int4-awq")
    model = onnx.load(str(export_quantized_step_onnx(source, tmp_path / "step.onnx", torch.float16)))
    name = "encoder.layers.3.mlp.down_proj"
    tensors = {tensor.name: tensor for tensor in model.graph.initializer}
    stored = load_file(source / "model.safetensors")
    values = numpy_helper.to_array(tensors[f"qdq.{name}.weight"]).astype(np.int8)
    np.testing.assert_array_equal(values, unpack_int4(stored[f"{name}.weight"]).T.numpy())
    scale = numpy_helper.to_array(tensors[f"qdq.{name}.weight_scale"])
    assert scale.dtype == np.float16 and scale.shape == (768 // 128, 256)


def test_fp8_draft_lora_reads_the_rounded_attention_output(
    tmp_path: Path, quantized_builtin: Callable[..., Path]
) -> None:
    """One reader of each attention output (o_proj's FP8 QuantizeLinear): TensorRT-RTX fuses attention
    into its MHA kernel only then."""
    source = quantized_builtin("fp8", "fp8")
    graph = onnx.load(
        str(export_quantized_step_onnx(source, tmp_path / "step.onnx", torch.float32, adapter=True))
    ).graph
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    o_proj_inputs = [node.input[0] for node in graph.node if node.name.endswith("self_attn.o_proj.input.Q")]
    assert len(o_proj_inputs) == 6 and all(readers[name] == ["QuantizeLinear"] for name in o_proj_inputs)
    lora_inputs = [
        name for node in graph.node if node.op_type == "MatMul" for name in node.input if ".o_proj.input.dq" in name
    ]
    assert len(lora_inputs) == 2 * 6  # o_proj itself and the LoRA's first matrix, per layer
