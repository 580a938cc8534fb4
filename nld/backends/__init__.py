"""Step backends: `torch` (reference, CPU or CUDA), `onnxruntime` (the exported step network, CPU) and
`tensorrt` (built engines, CUDA)."""

from __future__ import annotations

from nld.backends.onnxruntime_backend import OnnxRuntimeBackend
from nld.backends.tensorrt_backend import TensorRTBackend
from nld.backends.torch_backend import TorchBackend

BACKENDS = {"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend, "tensorrt": TensorRTBackend}
# Backends that can reuse an nld-build output: the keyword of their from_checkpoint and the build's folder.
BUILD_ARTIFACTS = {"onnxruntime": ("onnx_dir", "onnx"), "tensorrt": ("engine_dir", "engine")}

__all__ = ["BACKENDS", "BUILD_ARTIFACTS", "OnnxRuntimeBackend", "TensorRTBackend", "TorchBackend"]
