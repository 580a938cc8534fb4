"""The reference step backend: runs NLDTransformer in PyTorch on CPU or CUDA."""

from __future__ import annotations

import torch

from nld.backends.padded import PaddedBatchBackend
from nld.checkpoint import Checkpoint
from nld.config import NLDConfig
from nld.errors import NLDError
from nld.model import KV, NLDTransformer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """Map a dtype name (float32 | bfloat16 | float16, or fp32/bf16/fp16) to torch."""
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype '{name}': choose one of {', '.join(DTYPES)} (or fp32, bf16, fp16)")
    return DTYPES[key]


class TorchBackend(PaddedBatchBackend):
    """Step backend over the PyTorch reference model."""

    name = "torch"

    def __init__(self, model: NLDTransformer) -> None:
        self.model = model
        self.config: NLDConfig = model.config
        self.device = model.encoder.embed_tokens.weight.device
        self.dtype = model.encoder.embed_tokens.weight.dtype
        self.has_adapter = model.has_adapter

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu") -> TorchBackend:
        """Build the reference model from a loaded checkpoint on `device` (cpu, cuda, cuda:N) in `dtype`."""
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise NLDError(f"device '{device}' requested but this torch build sees no CUDA device")
        return cls(NLDTransformer.from_checkpoint(checkpoint, resolve_dtype(dtype), device))

    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, past: list[KV], adapter: bool
    ) -> tuple[torch.Tensor, list[KV]]:
        with torch.inference_mode():
            return self.model(input_ids, positions, bias, past, adapter)

    def _to_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.logits(outputs).float()
