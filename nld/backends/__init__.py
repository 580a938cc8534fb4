"""Step backends: `torch` (reference, CPU or CUDA). Others plug in behind the same seam."""

from __future__ import annotations

from nld.backends.torch_backend import TorchBackend

BACKENDS = {"torch": TorchBackend}

__all__ = ["BACKENDS", "TorchBackend"]
