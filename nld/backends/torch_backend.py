"""The reference backend: runs NLDTransformer in PyTorch on CPU or CUDA, eagerly or compiled."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from nld.backends.compiled import MIN_DYNAMIC, CompiledSteps, decode_widths, row_bucket, step_network
from nld.backends.padded import PaddedBatchBackend, StepBatch, StepShape
from nld.checkpoint import Checkpoint
from nld.config import NLDConfig
from nld.errors import NLDError
from nld.model import KV, NLDTransformer
from nld.modes.quadratic_spec import default_block
from nld.step import StepRequest

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """Map a dtype name (float32 | bfloat16 | float16, or fp32/bf16/fp16) to torch."""
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype '{name}': choose one of {', '.join(DTYPES)} (or fp32, bf16, fp16)")
    return DTYPES[key]


class TorchBackend(PaddedBatchBackend):
    """Step backend over the PyTorch reference model. With `compiled`, steps of the compiled widths run
    as torch.compile'd static-shape graphs (nld/backends/compiled.py); the others, eagerly."""

    name = "torch"

    def __init__(self, model: NLDTransformer, compiled: CompiledSteps | None = None) -> None:
        self.model = model
        self.config: NLDConfig = model.config
        self.device = model.encoder.embed_tokens.weight.device
        self.dtype = model.encoder.embed_tokens.weight.dtype
        self.has_adapter = model.has_adapter
        self.compiled = compiled
        self._bucketed: StepShape | None = None
        self._top1: tuple[torch.Tensor, torch.Tensor, int] | None = None  # the compiled step's greedy choice

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu", compile: bool = False
    ) -> TorchBackend:
        """Build the reference model from a loaded checkpoint on `device` (cpu, cuda, cuda:N) in `dtype`;
        `compile` runs the decode steps as compiled graphs."""
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise NLDError(f"device '{device}' requested but this torch build sees no CUDA device")
        model = NLDTransformer.from_checkpoint(checkpoint, resolve_dtype(dtype), device)
        model.fuse_projections()
        return cls(model, compiled_steps(model) if compile else None)

    @property
    def compile_seconds(self) -> float:
        """Seconds spent compiling so far (0 when eager)."""
        return sum(record.seconds for record in self.compiled.records) if self.compiled else 0.0

    def _shape(self, requests: list[StepRequest]) -> StepShape:
        exact = super()._shape(requests)
        self._bucketed = None
        if self.compiled is None:
            return exact
        width = self.compiled.width(exact.width)
        store = requests[0].cache.store
        shared = all(request.cache.store is store for request in requests)
        rows = row_bucket(exact.rows, store.slots if shared and store.slots >= exact.rows else None)
        prefix = self.compiled.prefix(exact.prefix, store.capacity if shared else exact.prefix)
        if width is None or prefix < MIN_DYNAMIC:
            return exact
        self._bucketed = StepShape(rows, width, prefix)
        return self._bucketed

    def _forward(self, batch: StepBatch, adapter: bool) -> tuple[torch.Tensor, KV]:
        inputs = (batch.input_ids, batch.positions, batch.bias, batch.past_keys, batch.past_values)
        self._top1 = None
        with torch.inference_mode():
            if self._bucketed is not None and self.compiled is not None:
                logits, presents, top1 = self.compiled(*inputs, adapter)
                self._top1 = (top1[0].flatten(), top1[1].flatten(), self.compiled.excluded)
                return logits, presents
            return step_network(self.model, *inputs, adapter, split_attention=False)

    def _to_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        if self._top1 is not None:  # the compiled step computed the logits itself
            return outputs
        with torch.inference_mode():
            return self.model.logits(outputs).float()

    def _graph_top1(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        return self._top1


def compiled_steps(model: NLDTransformer, widths: Iterable[int] | None = None) -> CompiledSteps:
    """The compiled step network of `model` for `widths` (default: the modes' decode widths at their
    default block lengths on the model's device)."""
    config = model.config
    device = model.encoder.embed_tokens.weight.device.type
    chosen = decode_widths(config.block_size, default_block(config.block_size, device)) if widths is None else widths
    return CompiledSteps(model, tuple(sorted(set(chosen))), config.block_size)
