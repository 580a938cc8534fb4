"""Run as a script (by test_build.py, in a subprocess): load libnld_trt_plugins.so into TensorRT-RTX and
build an SM120 engine from an ONNX graph with each NLD plugin as a custom node; print one JSON line per
plugin with whether its engine built and the layer the builder reports for it."""

from __future__ import annotations

import json
import sys

import tensorrt_rtx as trt
from onnx import TensorProto, helper

# plugin -> (inputs, outputs, attributes); shapes use "s" (batch, dynamic) and fixed sizes.
GRAPHS = {
    "NldTop1Confidence": (
        [("logits", TensorProto.FLOAT16, ["s", 4096])],
        [("ids", TensorProto.INT64, ["s"]), ("confidence", TensorProto.FLOAT, ["s"])],
        {"exclude_id": 3, "temperature": 0.0, "seed": 7},
    ),
    "NldSelectCommits": (
        [
            ("confidence", TensorProto.FLOAT, ["s", 8]),
            ("is_mask", TensorProto.BOOL, ["s", 8]),
            ("counts", TensorProto.INT64, ["s"]),
        ],
        [("commit", TensorProto.BOOL, ["s", 8])],
        {"use_threshold": 1, "threshold": 0.9},
    ),
    "NldAcceptDrafts": (
        [("block", TensorProto.INT64, ["s", 8]), ("verified", TensorProto.INT64, ["s", 8])],
        [("accepted", TensorProto.INT64, ["s"]), ("emitted", TensorProto.INT64, ["s", 8])],
        {},
    ),
    "NldKvKeep": (
        [
            ("values", TensorProto.FLOAT16, ["s", 12, 64, 32]),
            ("starts", TensorProto.INT64, ["s"]),
            ("offsets", TensorProto.INT64, ["s", 8]),
            ("counts", TensorProto.INT64, ["s"]),
        ],
        [("kept", TensorProto.FLOAT16, ["s", 12, 64, 32])],
        {},
    ),
    "NldKvCrop": (
        [
            ("values", TensorProto.BFLOAT16, ["s", 12, 64, 32]),
            ("lengths", TensorProto.INT64, ["s"]),
            ("new_lengths", TensorProto.INT64, ["s"]),
        ],
        [("cropped", TensorProto.BFLOAT16, ["s", 12, 64, 32])],
        {},
    ),
}


class Logger(trt.ILogger):
    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.lines: list[str] = []

    def log(self, severity: trt.ILogger.Severity, message: str) -> None:
        self.lines.append(message)


def build(name: str) -> dict:
    inputs, outputs, attributes = GRAPHS[name]
    node = helper.make_node(
        name,
        [n for n, _, _ in inputs],
        [n for n, _, _ in outputs],
        name=name,
        plugin_namespace="nld",
        plugin_version="1",
        **attributes,
    )
    graph = helper.make_graph(
        [node],
        name,
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(n, t, s) for n, t, s in outputs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    logger = Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString()):
        return {"plugin": name, "built": False, "error": parser.get_error(0).desc()}
    config = builder.create_builder_config()
    config.num_compute_capabilities = 1
    config.set_compute_capability(trt.ComputeCapability.SM120, 0)
    profile = builder.create_optimization_profile()
    for input_name, _, shape in inputs:
        fixed = [d for d in shape[1:]]
        profile.set_shape(input_name, (1, *fixed), (4, *fixed), (16, *fixed))
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    layer = next((line for line in logger.lines if f"ForeignNode[{name}]" in line and " -> " in line), "")
    return {"plugin": name, "built": engine is not None, "layer": layer}


if __name__ == "__main__":
    trt.Builder(Logger())  # the registry logs through a builder's logger
    if trt.get_plugin_registry().load_library(sys.argv[1]) is None:
        sys.exit(f"TensorRT-RTX could not load {sys.argv[1]}")
    for plugin in GRAPHS:
        print(json.dumps(build(plugin)), flush=True)
