"""Step backends: `torch` (reference, CPU or CUDA) and `onnxruntime` (the exported step network, CPU)."""

from __future__ import annotations

from nld.backends.onnxruntime_backend import OnnxRuntimeBackend
from nld.backends.torch_backend import TorchBackend

BACKENDS = {"torch": TorchBackend, "onnxruntime": OnnxRuntimeBackend}

__all__ = ["BACKENDS", "OnnxRuntimeBackend", "TorchBackend"]
