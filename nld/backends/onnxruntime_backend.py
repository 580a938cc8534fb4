"""A step backend that runs the exported ONNX step network with onnxruntime (CPU).

`from_checkpoint` exports the network on the fly (one graph, plus one with the draft adapter baked in
when the checkpoint has one) into a temporary folder, removed once the sessions hold the graphs, or
loads graphs exported earlier from `onnx_dir`.

Two graphs per adapter setting: the plain step graph, fed each layer's committed K/V as a contiguous
copy, and the in-place graph (nld/onnx_store_graph.py), bound with I/O binding to the KV store's own
buffers, which reads the past and writes the new K/V where they lie. The backend's store is layer-major
so that a layer's window of slots is one buffer. A step goes to the in-place graph when it can serve it:
a causal step (AR, prefill, verification) of one row or of one token per row, over a window of slots
that are all the step's, with room for the new tokens; every other step (diffusion drafts, quadratic
blocks, a batch with rows riding along) runs the plain graph. Graphs reused from `onnx_dir` (a build's
`onnx/`) without the in-place graph run every step on the plain graph.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import onnx
import torch

from nld.backends.padded import PaddedBatchBackend, StepBatch
from nld.backends.torch_backend import resolve_dtype
from nld.checkpoint import Checkpoint
from nld.config import NLDConfig
from nld.errors import NLDError
from nld.kv_cache import KV, KVCache, KVStore
from nld.model import NLDTransformer
from nld.onnx_export import export_step_onnx, io_names
from nld.onnx_store_graph import export_store_step_onnx, store_io_names

GRAPH_FILES = {False: "step.onnx", True: "step_adapter.onnx"}
STORE_GRAPH_FILES = {False: "step_store.onnx"}


def session_options() -> onnxruntime.SessionOptions:  # noqa: F821 (imported when used)
    """onnxruntime's defaults, except:
    - INT4 Q/DQ MatMuls (onnx_qdq.py) compute in float32: by default they fuse into MatMulNBits with int8
      activations (accuracy level 4), which changes the network's numbers by ~0.1 in the logits of the
      built-in model;
    - the thread pools do not spin between operators: spinning threads took the cores from torch's own
      threads and from the other graphs' sessions (built-in model, 2 cores: 1.1-3.7x the tokens/s of
      spinning sessions in every mode; docs/bench.md, "onnxruntime")."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


ONNX_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
}


def _check_graph_dtype(path: Path, dtype: torch.dtype, float_input: str = "attention_bias") -> None:
    """Refuse a reused graph whose float type (that of its `float_input`) is not the one asked for (a bf16
    build's graphs, say)."""
    if not path.exists():
        return
    inputs = {value.name: value for value in onnx.load(str(path), load_external_data=False).graph.input}
    found = ONNX_FLOAT_TYPES.get(inputs[float_input].type.tensor_type.elem_type)
    if found != dtype:
        hint = " (onnxruntime's CPU provider has no bfloat16 kernels)" if found == torch.bfloat16 else ""
        raise NLDError(f"{path} computes in {found}, not the requested {dtype}{hint}: use --dtype to match it")


class OnnxRuntimeBackend(PaddedBatchBackend):
    """Step backend over onnxruntime sessions of the step network."""

    name = "onnxruntime"

    def __init__(
        self,
        config: NLDConfig,
        graphs: dict[bool, Path],
        dtype: torch.dtype,
        store_graphs: dict[bool, Path] | None = None,
    ) -> None:
        import onnxruntime

        self.config = config
        self.dtype = dtype
        self.device = torch.device("cpu")
        self.has_adapter = True in graphs
        self.sessions = {
            adapter: onnxruntime.InferenceSession(str(path), session_options()) for adapter, path in graphs.items()
        }
        self.store_sessions = {
            adapter: onnxruntime.InferenceSession(str(path), session_options())
            for adapter, path in (store_graphs or {}).items()
        }
        self.input_names, self.output_names = io_names(config.num_hidden_layers)
        self.store_input_names, self.store_output_names = store_io_names(config.num_hidden_layers)
        self.store_graph_steps = 0  # steps run by the in-place graph
        self.plain_graph_steps = 0  # and by the plain one
        # (store, first, rows, adapter) -> binding; unlocked: a backend is stepped by one thread at a time
        self._bindings: dict[tuple[int, int, int, bool], object] = {}

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
            # the in-place graph is exported with the plain ones (graphs exported earlier may come without it),
            # adapter-off only: the draft adapter's steps are diffusion drafts, which it cannot serve
            store_graph = folder / STORE_GRAPH_FILES[False]
            _check_graph_dtype(store_graph, torch_dtype, "cache.0.key")
            if missing:
                model = NLDTransformer.from_checkpoint(checkpoint, torch_dtype)
                for adapter in missing:
                    export_step_onnx(model, graphs[adapter], adapter=adapter)
                if not store_graph.exists():
                    export_store_step_onnx(model, store_graph)
            store_graphs = {False: store_graph} if store_graph.exists() else {}
            return cls(checkpoint.config, graphs, torch_dtype, store_graphs)
        finally:  # the sessions hold the graphs in memory: an on-the-fly export leaves no folder behind
            if onnx_dir is None:
                shutil.rmtree(folder, ignore_errors=True)

    def new_store(self, slots: int, capacity: int) -> KVStore:
        """A KV store laid out layer-major when the in-place graphs are here (their buffers are its blocks)."""
        c = self.config
        layers, kv_heads, head_dim = c.num_hidden_layers, c.num_key_value_heads, c.head_dim
        major = bool(self.store_sessions)
        return KVStore(layers, kv_heads, head_dim, slots, capacity, self.dtype, self.device, layer_major=major)

    def new_cache(self, capacity: int) -> KVCache:
        """A cache with a store of its own, laid out as `new_store` lays them out."""
        return self.new_store(1, capacity).cache(0)

    def _forward(self, batch: StepBatch, adapter: bool) -> tuple[torch.Tensor, KV | None]:
        if self._store_graph_serves(batch, adapter):
            self.store_graph_steps += 1
            return self._forward_in_place(batch, adapter), None
        self.plain_graph_steps += 1
        past = [t.contiguous() for layer in zip(batch.past_keys, batch.past_values, strict=True) for t in layer]
        arrays = [batch.input_ids, batch.positions, batch.bias.to(self.dtype), *past]
        feeds = {name: tensor.numpy() for name, tensor in zip(self.input_names, arrays, strict=True)}
        outputs = [torch.from_numpy(array) for array in self.sessions[adapter].run(self.output_names, feeds)]
        layers = range(self.config.num_hidden_layers)
        return outputs[0], (
            torch.stack([outputs[1 + 2 * i] for i in layers]),
            torch.stack([outputs[2 + 2 * i] for i in layers]),
        )

    def _store_graph_serves(self, batch: StepBatch, adapter: bool) -> bool:
        """Whether the in-place graph computes this step as the plain graph would (see the module's doc)."""
        store, lengths = batch.store, batch.lengths
        if adapter not in self.store_sessions or store is None or not store.layer_major:
            return False
        rows, width = batch.input_ids.shape
        if len(batch.row_of) != rows or (rows > 1 and width > 1):  # a riding row; the kernel's batch limit
            return False
        if max(lengths) + width > store.capacity:
            return False
        new = batch.bias[:, 0, :, batch.bias.shape[-1] - width :]  # [rows, width, width]: 0 where attending
        return torch.equal(new, _causal_bias(width, new.dtype).expand_as(new))

    def _forward_in_place(self, batch: StepBatch, adapter: bool) -> torch.Tensor:
        """Run the in-place graph on the batch's window of the store: logits out, new K/V written there."""
        assert batch.store is not None
        rows, width = batch.input_ids.shape
        lengths = torch.tensor(batch.lengths, dtype=torch.int32)
        scalars = [
            batch.input_ids,
            batch.positions,
            lengths + (width - 1),
            torch.tensor(int(lengths.max()) + width, dtype=torch.int32),
        ]
        binding = self._window_binding(batch.store, batch.first, rows, adapter)
        for name, tensor in zip(self.store_input_names[:4], scalars, strict=True):
            binding.bind_cpu_input(name, tensor.numpy())
        binding.bind_output("logits")
        self.store_sessions[adapter].run_with_iobinding(binding)
        return torch.from_numpy(binding.get_outputs()[0].numpy())

    def _window_binding(self, store: KVStore, first: int, rows: int, adapter: bool) -> object:
        """The I/O binding of the in-place graph whose cache inputs and outputs are the store's buffers of
        slots [first, first + rows), made once per window and kept while the store lives."""
        import onnxruntime

        key = (id(store), first, rows, adapter)
        binding = self._bindings.get(key)
        if binding is not None:
            return binding
        if not any(known[0] == id(store) for known in self._bindings):  # forget its windows when it goes
            weakref.finalize(store, self._forget_store, id(store))
        binding = self.store_sessions[adapter].io_binding()
        binding.bind_output("logits")  # first: get_outputs()[0]
        keys, values = store.layer_blocks(first, rows)
        buffers = [tensor for layer in zip(keys, values, strict=True) for tensor in layer]
        for input_name, output_name, buffer in zip(
            self.store_input_names[4:], self.store_output_names[1:], buffers, strict=True
        ):
            value = onnxruntime.OrtValue.ortvalue_from_numpy(buffer.numpy())  # the store's memory, not a copy
            binding.bind_ortvalue_input(input_name, value)
            binding.bind_ortvalue_output(output_name, value)
        self._bindings[key] = binding
        return binding

    def _forget_store(self, store_id: int) -> None:
        for key in [key for key in self._bindings if key[0] == store_id]:
            del self._bindings[key]

    def _to_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float()


def _causal_bias(width: int, dtype: torch.dtype) -> torch.Tensor:
    """The bias of a causal step among its own tokens: 0 on and below the diagonal, -inf above."""
    return torch.full((width, width), float("-inf"), dtype=dtype).triu(1)
