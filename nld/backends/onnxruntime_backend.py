"""A step backend that runs the exported ONNX step network with onnxruntime (CPU).

`from_checkpoint` exports the network on the fly (one graph, plus one with the draft adapter baked in
when the checkpoint has one) into a temporary folder, removed once the sessions hold the graphs, or
loads graphs exported earlier from `onnx_dir`.
The KV caches stay torch tensors on the host; each step feeds them as NumPy views.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import onnx
import torch

from nld.backends.padded import PaddedBatchBackend, StepBatch
from nld.backends.torch_backend import resolve_dtype
from nld.checkpoint import Checkpoint
from nld.config import NLDConfig
from nld.errors import NLDError
from nld.kv_cache import KV
from nld.model import NLDTransformer
from nld.onnx_export import export_step_onnx, io_names

GRAPH_FILES = {False: "step.onnx", True: "step_adapter.onnx"}


def session_options() -> onnxruntime.SessionOptions:  # noqa: F821 (imported when used)
    """onnxruntime's defaults, except that INT4 Q/DQ MatMuls (onnx_qdq.py) compute in float32: by default
    they fuse into MatMulNBits with int8 activations (accuracy level 4), which changes the network's numbers
    by ~0.1 in the logits of the built-in model."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    return options


ONNX_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
}


def _check_graph_dtype(path: Path, dtype: torch.dtype) -> None:
    """Refuse a reused graph whose float type is not the one asked for (a bf16 build's graphs, say)."""
    if not path.exists():
        return
    inputs = {value.name: value for value in onnx.load(str(path), load_external_data=False).graph.input}
    found = ONNX_FLOAT_TYPES.get(inputs["attention_bias"].type.tensor_type.elem_type)
    if found != dtype:
        hint = " (onnxruntime's CPU provider has no bfloat16 kernels)" if found == torch.bfloat16 else ""
        raise NLDError(f"{path} computes in {found}, not the requested {dtype}{hint}: use --dtype to match it")


class OnnxRuntimeBackend(PaddedBatchBackend):
    """Step backend over onnxruntime sessions of the step network."""

    name = "onnxruntime"

    def __init__(self, config: NLDConfig, graphs: dict[bool, Path], dtype: torch.dtype) -> None:
        import onnxruntime

        self.config = config
        self.dtype = dtype
        self.device = torch.device("cpu")
        self.has_adapter = True in graphs
        self.sessions = {
            adapter: onnxruntime.InferenceSession(str(path), session_options()) for adapter, path in graphs.items()
        }
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
        try:
            adapters = [False, True] if checkpoint.adapter is not None else [False]
            graphs = {adapter: folder / GRAPH_FILES[adapter] for adapter in adapters}
            for path in graphs.values():
                _check_graph_dtype(path, torch_dtype)
            missing = [adapter for adapter, path in graphs.items() if not path.exists()]
            if missing:
                model = NLDTransformer.from_checkpoint(checkpoint, torch_dtype)
                for adapter in missing:
                    export_step_onnx(model, graphs[adapter], adapter=adapter)
            return cls(checkpoint.config, graphs, torch_dtype)
        finally:  # the sessions hold the graphs in memory: an on-the-fly export leaves no folder behind
            if onnx_dir is None:
                shutil.rmtree(folder, ignore_errors=True)

    def _forward(self, batch: StepBatch, adapter: bool) -> tuple[torch.Tensor, KV]:
        past = [t.contiguous() for layer in zip(batch.past_keys, batch.past_values, strict=True) for t in layer]
        arrays = [batch.input_ids, batch.positions, batch.bias.to(self.dtype), *past]
        feeds = {name: tensor.numpy() for name, tensor in zip(self.input_names, arrays, strict=True)}
        outputs = [torch.from_numpy(array) for array in self.sessions[adapter].run(self.output_names, feeds)]
        layers = range(self.config.num_hidden_layers)
        return outputs[0], (
            torch.stack([outputs[1 + 2 * i] for i in layers]),
            torch.stack([outputs[2 + 2 * i] for i in layers]),
        )

    def _to_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float()
