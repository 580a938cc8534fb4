"""The step network of a quantized checkpoint with standard ONNX Q/DQ, so that TensorRT(-RTX) builds
engines that keep the low-precision weights.

The network is exported from the dequantized checkpoint (onnx_export.py), then each quantized linear's
MatMul (found by the module path the exporter records in `pkg.torch.onnx.name_scopes`) takes its weight
from the checkpoint's quantized tensors instead of the dense copy, which is dropped:
- W4A16_AWQ: `B = DequantizeLinear(INT4 [in, out], scale [in/128, out], axis=0, block_size=128)`
  and the AWQ input scale as `x * pre_quant_scale` before the MatMul;
- FP8: `B = DequantizeLinear(FLOAT8E4M3FN [in, out], scale)` and the input through
  `QuantizeLinear -> DequantizeLinear` with its calibrated scale (FP8 activations);
- an FP8 KV cache: the K and V projections' outputs through FP8 Q/DQ with `k_scale` / `v_scale`.
Opset 21 (INT4 and blocked DequantizeLinear). Scales take the graph's float type.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from nld.checkpoint import load_checkpoint
from nld.convert.trtllm_quant import RawWeights, read_quantization
from nld.errors import NLDError
from nld.model import NLDTransformer
from nld.onnx_export import export_step_onnx
from nld.quantize.hf_format import unpack_int4

QDQ_OPSET = 21
NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16}
FP8 = TensorProto.FLOAT8E4M3FN
LINEAR_SCOPE = "torch.nn.modules.linear.Linear"


def _module_path(node: onnx.NodeProto) -> str | None:
    """The NLD module a MatMul computes (`encoder.layers.0.self_attn.q_proj`), from the exporter's metadata."""
    metadata = {entry.key: entry.value for entry in node.metadata_props}
    if LINEAR_SCOPE not in metadata.get("pkg.torch.onnx.class_hierarchy", ""):
        return None
    scopes = ast.literal_eval(metadata.get("pkg.torch.onnx.name_scopes", "[]"))
    return scopes[-2].removeprefix("model.") if len(scopes) >= 2 else None


class GraphEdit:
    """The initializers and Q/DQ node pairs a rewrite adds, named `qdq.*` so they cannot clash with the exporter's."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.numpy_type = NUMPY_TYPES[dtype]
        self.initializers: list[TensorProto] = []

    def constant(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array, f"qdq.{name}"))
        return f"qdq.{name}"

    def scale(self, name: str, tensor: torch.Tensor) -> str:
        return self.constant(name, tensor.float().numpy().astype(self.numpy_type))

    def fp8_qdq(self, name: str, source: str, scale: torch.Tensor) -> tuple[list[onnx.NodeProto], str]:
        """QuantizeLinear -> DequantizeLinear of `source` to FP8 with a per-tensor scale."""
        scale_name = self.scale(f"{name}.scale", scale.reshape(()))
        zero = self.constant(f"{name}.zero", np.zeros((), dtype=ml_dtypes.float8_e4m3fn))
        quantized, restored = f"qdq.{name}.q", f"qdq.{name}.dq"
        nodes = [
            helper.make_node("QuantizeLinear", [source, scale_name, zero], [quantized], name=f"qdq.{name}.Q"),
            helper.make_node("DequantizeLinear", [quantized, scale_name, zero], [restored], name=f"qdq.{name}.DQ"),
        ]
        return nodes, restored


def _int4_awq_linear(
    edit: GraphEdit, name: str, matmul: onnx.NodeProto, tensors: Mapping[str, torch.Tensor], group: int
) -> list[onnx.NodeProto]:
    values = unpack_int4(tensors[f"{name}.weight"]).T.contiguous().numpy().astype(ml_dtypes.int4)
    weight = edit.constant(f"{name}.weight", values)
    scale = edit.scale(f"{name}.weight_scale", tensors[f"{name}.weight_scale"].T.contiguous())
    dense = f"qdq.{name}.weight.dq"
    nodes = [
        helper.make_node(
            "DequantizeLinear", [weight, scale], [dense], name=f"qdq.{name}.weight.DQ", axis=0, block_size=group
        )
    ]
    scaled = f"qdq.{name}.input.awq"
    prequant = edit.scale(f"{name}.pre_quant_scale", tensors[f"{name}.pre_quant_scale"])
    nodes.append(helper.make_node("Mul", [matmul.input[0], prequant], [scaled], name=f"qdq.{name}.input.Mul"))
    matmul.input[0], matmul.input[1] = scaled, dense
    return nodes


def _fp8_linear(
    edit: GraphEdit, name: str, matmul: onnx.NodeProto, tensors: Mapping[str, torch.Tensor], group: int | None
) -> list[onnx.NodeProto]:
    fp8_values = tensors[f"{name}.weight"].T.contiguous().view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    weight = edit.constant(f"{name}.weight", fp8_values)
    scale = edit.scale(f"{name}.weight_scale", tensors[f"{name}.weight_scale"].reshape(()))
    zero = edit.constant(f"{name}.weight.zero", np.zeros((), dtype=ml_dtypes.float8_e4m3fn))
    dense = f"qdq.{name}.weight.dq"
    nodes = [helper.make_node("DequantizeLinear", [weight, scale, zero], [dense], name=f"qdq.{name}.weight.DQ")]
    activation, restored = edit.fp8_qdq(f"{name}.input", matmul.input[0], tensors[f"{name}.input_scale"])
    matmul.input[0], matmul.input[1] = restored, dense
    return nodes + activation


LINEAR_REWRITES: dict[str, Callable[..., list[onnx.NodeProto]]] = {
    "W4A16_AWQ": _int4_awq_linear,
    "FP8": _fp8_linear,
}
KV_SCALES = {"self_attn.k_proj": "k_scale", "self_attn.v_proj": "v_scale"}


def _share_rounded_inputs(nodes: list[onnx.NodeProto], rounded_inputs: list[tuple[str, str, str]]) -> None:
    """The draft LoRA beside an FP8 linear (o_proj's, in the adapter graph) reads the linear's FP8-rounded
    input too: with two readers of the attention output, TensorRT-RTX no longer fuses attention into its
    MHA kernel (measured: 0 of 12 fused layers, 12 of 12 with this)."""
    for source, rounded, parent in rounded_inputs:
        for node in nodes:
            metadata = {entry.key: entry.value for entry in node.metadata_props}
            scopes = metadata.get("pkg.torch.onnx.name_scopes", "")
            if node.op_type == "MatMul" and _module_path(node) is None and f"'model.{parent}'" in scopes:
                node.input[:] = [rounded if name == source else name for name in node.input]


def _topological(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """`nodes` in an order where every input is produced before it is read (stable otherwise)."""
    ordered, pending, known = [], list(nodes), set(available) | {""}
    while pending:
        ready = [node for node in pending if all(name in known for name in node.input)]
        if not ready:
            raise NLDError(f"ONNX Q/DQ: the rewritten graph has a cycle or a missing input at {pending[0].name}")
        ready_ids = {id(node) for node in ready}
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        pending = [node for node in pending if id(node) not in ready_ids]
    return ordered


def add_qdq(model: onnx.ModelProto, tensors: Mapping[str, torch.Tensor], quantization: dict, dtype: torch.dtype) -> int:
    """Rewrite `model` in place; returns the number of quantized linears. Every quantized linear of the
    checkpoint must be found exactly once."""
    algorithm = quantization["quant_algo"]
    wanted = {name.removesuffix(".weight_scale") for name in tensors if name.endswith(".weight_scale")}
    kv_fp8 = quantization.get("kv_cache_quant_algo") == "FP8"
    graph, edit = model.graph, GraphEdit(dtype)
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    dense_weights, found, nodes = set(), set(), []
    rounded_inputs: list[tuple[str, str, str]] = []  # (input, its FP8 Q/DQ output, the linear's parent module)
    for node in graph.node:
        name = _module_path(node) if node.op_type == "MatMul" else None
        if name not in wanted:
            nodes.append(node)
            continue
        if name in found or node.input[1] not in initializers:
            raise NLDError(f"ONNX Q/DQ: the MatMul of {name} is not a single MatMul by a constant weight")
        found.add(name)
        dense_weights.add(node.input[1])
        source = node.input[0]
        nodes += LINEAR_REWRITES[algorithm](edit, name, node, tensors, quantization.get("group_size"))
        nodes.append(node)
        if algorithm == "FP8":
            rounded_inputs.append((source, node.input[0], name.rsplit(".", 1)[0]))
        suffix = next((scale for module, scale in KV_SCALES.items() if kv_fp8 and name.endswith(module)), None)
        if suffix is not None:  # the values the FP8 KV cache holds
            output = node.output[0]
            node.output[0] = f"qdq.{name}.output"
            kv_nodes, restored = edit.fp8_qdq(f"{name}.output", node.output[0], tensors[f"{name}.{suffix}"])
            nodes += [*kv_nodes, helper.make_node("Identity", [restored], [output], name=f"qdq.{name}.output.Id")]
    if missing := sorted(wanted - found):
        raise NLDError(f"ONNX Q/DQ: no MatMul found for {', '.join(missing[:3])} (of {len(missing)})")
    _share_rounded_inputs(nodes, rounded_inputs)
    constants = [*graph.initializer, *edit.initializers]
    nodes = _topological(nodes, {tensor.name for tensor in constants} | {value.name for value in graph.input})
    still_used = {name for node in nodes for name in node.input}
    kept = [tensor for tensor in graph.initializer if tensor.name not in dense_weights or tensor.name in still_used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(kept + edit.initializers)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, QDQ_OPSET)
    return len(found)


def export_quantized_step_onnx(model_dir: Path, path: Path, dtype: torch.dtype, adapter: bool = False) -> Path:
    """Export the step network of a unified quantized checkpoint (`nld quantize`) with Q/DQ."""
    model_dir = Path(model_dir)
    quantization = read_quantization(model_dir)
    if quantization is None:
        raise NLDError(f"{model_dir}: not a quantized checkpoint (no hf_quant_config.json)")
    model = NLDTransformer.from_checkpoint(load_checkpoint(model_dir, with_adapter=adapter), dtype)
    tensors = RawWeights(model_dir)
    return export_step_onnx(
        model, path, adapter=adapter, rewrite=lambda graph: add_qdq(graph, tensors, quantization, dtype)
    )
