"""A step backend that runs the exported ONNX step network with onnxruntime (CPU).

`from_checkpoint` exports the network on the fly (one graph, plus one with the draft adapter baked in
when the checkpoint has one) into a cache folder, or loads graphs exported earlier from `onnx_dir`.
The KV caches stay torch tensors on the host; each step feeds them as NumPy views.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from nld.backends.padded import PaddedBatchBackend
from nld.backends.torch_backend import resolve_dtype
from nld.checkpoint import Checkpoint
from nld.config import NLDConfig
from nld.errors import NLDError
from nld.kv_cache import KV
from nld.model import NLDTransformer
from nld.onnx_export import export_step_onnx, io_names

GRAPH_FILES = {False: "step.onnx", True: "step_adapter.onnx"}


class OnnxRuntimeBackend(PaddedBatchBackend):
    """Step backend over onnxruntime sessions of the step network."""

    name = "onnxruntime"

    def __init__(self, config: NLDConfig, graphs: dict[bool, Path], dtype: torch.dtype) -> None:
        import onnxruntime

        self.config = config
        self.dtype = dtype
        self.device = torch.device("cpu")
        self.has_adapter = True in graphs
        self.sessions = {adapter: onnxruntime.InferenceSession(str(path)) for adapter, path in graphs.items()}
        self.input_names, self.output_names = io_names(config.num_hidden_layers)

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu", onnx_dir: str | Path | None = None
    ) -> OnnxRuntimeBackend:
        """Export (or reuse, from `onnx_dir`) the step graphs of `checkpoint` and open them."""
        if torch.device(device).type != "cpu":
            raise NLDError(f"the onnxruntime backend runs on cpu only, not '{device}'")
        torch_dtype = resolve_dtype(dtype)
        if torch_dtype == torch.bfloat16:
            raise NLDError("onnxruntime's CPU provider has no bfloat16 kernels: use --dtype float32 or float16")
        folder = Path(onnx_dir) if onnx_dir else Path(tempfile.mkdtemp(prefix="nld-onnx-"))
        adapters = [False, True] if checkpoint.adapter is not None else [False]
        graphs = {adapter: folder / GRAPH_FILES[adapter] for adapter in adapters}
        missing = [adapter for adapter, path in graphs.items() if not path.exists()]
        if missing:
            model = NLDTransformer.from_checkpoint(checkpoint, torch_dtype)
            for adapter in missing:
                export_step_onnx(model, graphs[adapter], adapter=adapter)
        return cls(checkpoint.config, graphs, torch_dtype)

    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, past: list[KV], adapter: bool
    ) -> tuple[torch.Tensor, list[KV]]:
        arrays = [input_ids, positions, bias.to(self.dtype)] + [t.contiguous() for pair in past for t in pair]
        feeds = {name: tensor.numpy() for name, tensor in zip(self.input_names, arrays, strict=True)}
        outputs = [torch.from_numpy(array) for array in self.sessions[adapter].run(self.output_names, feeds)]
        presents = [(outputs[1 + 2 * i], outputs[2 + 2 * i]) for i in range(self.config.num_hidden_layers)]
        return outputs[0], presents

    def _to_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float()
