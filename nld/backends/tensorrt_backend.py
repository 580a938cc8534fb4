"""Step backend over TensorRT / TensorRT-RTX engines of the step network (CUDA only).

Engines come from a build (`nld-build ... --output OUT` writes `OUT/engine/step.engine`, plus
`step_adapter.engine` with a draft adapter, and `engine_report.json` naming the runtime that built them),
or are built on the fly for the local GPU from the checkpoint (ONNX export, then the installed runtime).
Each engine has a decode and a prefill optimization profile; every forward runs in the first profile
whose shape ranges hold it. Inputs and outputs are torch CUDA tensors bound by address.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from nld.backends.padded import PaddedBatchBackend, StepBatch
from nld.backends.torch_backend import resolve_dtype
from nld.builder.engine_stage import GRAPHS
from nld.builder.plan import step_tokens
from nld.builder.profiles import engine_profiles
from nld.builder.trt_engine import ENGINE_RUNTIMES, EngineRuntime, build_engine, runtime_module
from nld.checkpoint import Checkpoint
from nld.config import NLDConfig
from nld.errors import NLDError
from nld.kv_cache import KV
from nld.model import NLDTransformer
from nld.modes import MODES
from nld.onnx_export import export_step_onnx, io_names

ON_THE_FLY_CONTEXT = 2048  # engines built on the fly: context and batch they accept
ON_THE_FLY_BATCH = 8


@dataclass(frozen=True)
class ProfileRange:
    """The (batch, steps, past) box one optimization profile accepts, from its min and max shapes."""

    batch: tuple[int, int]
    steps: tuple[int, int]
    past: tuple[int, int]

    def holds(self, batch: int, steps: int, past: int) -> bool:
        return all(
            lo <= value <= hi
            for value, (lo, hi) in zip((batch, steps, past), (self.batch, self.steps, self.past), strict=True)
        )


def pick_profile(ranges: list[ProfileRange], batch: int, steps: int, past: int) -> int:
    """Index of the first profile that holds a (batch, steps, past) forward; a clear error otherwise."""
    for index, box in enumerate(ranges):
        if box.holds(batch, steps, past):
            return index
    raise NLDError(
        f"no engine profile holds batch {batch}, {steps} tokens per step, {past} cached tokens "
        f"(profiles: {[(box.batch, box.steps, box.past) for box in ranges]}); rebuild with larger --max-batch, "
        f"--max-prefill or --max-context"
    )


def local_runtime() -> tuple[EngineRuntime, list[str]]:
    """The installed runtime that builds for this host's GPU, and the targets to pass it."""
    datacenter = ENGINE_RUNTIMES["tensorrt"]
    if runtime_module(datacenter) is not None:
        return datacenter, []
    rtx = ENGINE_RUNTIMES["tensorrt-rtx"]
    module = runtime_module(rtx)
    if module is None:
        raise NLDError("the tensorrt backend needs the 'tensorrt' or 'tensorrt_rtx' module on this GPU host")
    major, minor = torch.cuda.get_device_capability()
    target = f"SM{major}{minor}"
    if not hasattr(module.ComputeCapability, target):
        raise NLDError(f"TensorRT-RTX cannot build for this GPU ({target}); install datacenter TensorRT")
    return rtx, [target]


class _Engine:
    """One deserialized engine: an execution context per optimization profile."""

    def __init__(self, trt: ModuleType, path: Path, layers: int) -> None:
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise NLDError(f"{path}: TensorRT could not deserialize this engine (built for another GPU or version?)")
        self.stream = torch.cuda.Stream()
        self.contexts = []
        self.ranges = []
        for index in range(self.engine.num_optimization_profiles):
            context = self.engine.create_execution_context()
            context.set_optimization_profile_async(index, self.stream.cuda_stream)
            self.contexts.append(context)
            ids = self.engine.get_tensor_profile_shape("input_ids", index)
            past = self.engine.get_tensor_profile_shape("past_key_values.0.key", index)
            self.ranges.append(ProfileRange((ids[0][0], ids[2][0]), (ids[0][1], ids[2][1]), (past[0][2], past[2][2])))
        self.input_names, self.output_names = io_names(layers)
        self.output_dtypes = {name: _torch_dtype(self.engine.get_tensor_dtype(name)) for name in self.output_names}
        self.placeholder = torch.zeros(1, device="cuda")  # bound for zero-size inputs (an empty cache)

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        batch, steps = inputs[0].shape
        past = inputs[3].shape[2]
        context = self.contexts[pick_profile(self.ranges, batch, steps, past)]
        for name, tensor in zip(self.input_names, inputs, strict=True):
            context.set_input_shape(name, tuple(tensor.shape))
            context.set_tensor_address(name, tensor.data_ptr() if tensor.numel() else self.placeholder.data_ptr())
        outputs = []
        for name in self.output_names:
            shape = tuple(context.get_tensor_shape(name))
            tensor = torch.empty(shape, dtype=self.output_dtypes[name], device="cuda")
            context.set_tensor_address(name, tensor.data_ptr() if tensor.numel() else self.placeholder.data_ptr())
            outputs.append(tensor)
        self.stream.wait_stream(torch.cuda.current_stream())
        if not context.execute_async_v3(self.stream.cuda_stream):
            raise NLDError("TensorRT failed to run the step engine (see the TensorRT log above)")
        torch.cuda.current_stream().wait_stream(self.stream)
        return outputs


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT64": torch.int64}


def _torch_dtype(trt_dtype: object) -> torch.dtype:
    """torch's dtype for a TensorRT DataType (`DataType.HALF` -> torch.float16)."""
    return _TORCH_DTYPES[str(trt_dtype).rsplit(".", 1)[-1]]


class TensorRTBackend(PaddedBatchBackend):
    """Step backend over built engines; needs a CUDA GPU and the runtime that built them."""

    name = "tensorrt"

    def __init__(self, config: NLDConfig, engines: dict[bool, _Engine], dtype: torch.dtype) -> None:
        self.config = config
        self.engines = engines
        self.dtype = dtype
        self.device = torch.device("cuda")
        self.has_adapter = True in engines

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, dtype: str = "float16", device: str = "cuda", engine_dir: str | Path | None = None
    ) -> TensorRTBackend:
        """Open the engines in `engine_dir` (a build's `engine/`; they fix the dtype), or build them for this
        GPU on the fly in `dtype`."""
        if torch.device(device).type != "cuda" or not torch.cuda.is_available():
            raise NLDError(f"the tensorrt backend runs engines on a CUDA GPU; device '{device}' is not one here")
        layers = checkpoint.config.num_hidden_layers
        if engine_dir is None:
            runtime = local_runtime()[0]
            engine_dir = _build_for_this_gpu(checkpoint, resolve_dtype(dtype))
        else:
            engine_dir = Path(engine_dir)
            report = engine_dir / "engine_report.json"
            if not report.exists():
                raise NLDError(f"{report} not found: point at the engine/ folder of an nld-build output")
            runtime = ENGINE_RUNTIMES[json.loads(report.read_text())["engines"][0]["runtime"]]
        trt = runtime_module(runtime)
        if trt is None:
            raise NLDError(f"the engines were built with {runtime.name}, which is not installed ({runtime.install})")
        engines = {}
        for name, adapter in GRAPHS.items():
            path = Path(engine_dir) / f"{name}.engine"
            if path.exists() and (not adapter or checkpoint.adapter is not None):
                engines[adapter] = _Engine(trt, path, layers)
        if False not in engines:
            raise NLDError(f"{engine_dir}/step.engine not found")
        cache_dtype = _torch_dtype(engines[False].engine.get_tensor_dtype("past_key_values.0.key"))
        return cls(checkpoint.config, engines, cache_dtype)

    def _forward(self, batch: StepBatch, adapter: bool) -> tuple[torch.Tensor, KV]:
        past = [t.contiguous() for layer in zip(batch.past_keys, batch.past_values, strict=True) for t in layer]
        inputs = [batch.input_ids, batch.positions, batch.bias.to(self.dtype), *past]
        outputs = self.engines[adapter].run(inputs)
        layers = range(self.config.num_hidden_layers)
        return outputs[0], (
            torch.stack([outputs[1 + 2 * i] for i in layers]),
            torch.stack([outputs[2 + 2 * i] for i in layers]),
        )

    def _to_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.float()


def _build_for_this_gpu(checkpoint: Checkpoint, dtype: torch.dtype) -> Path:
    runtime, targets = local_runtime()
    folder = Path(tempfile.mkdtemp(prefix="nld-engine-"))
    model = NLDTransformer.from_checkpoint(checkpoint, dtype)
    config = checkpoint.config
    context = min(ON_THE_FLY_CONTEXT, config.max_position_embeddings)
    profiles = engine_profiles(config, step_tokens(config), context, ON_THE_FLY_BATCH, tuple(MODES))
    reports = []
    for name, adapter in GRAPHS.items():
        if adapter and checkpoint.adapter is None:
            continue
        onnx = export_step_onnx(model, folder / f"{name}.onnx", adapter=adapter)
        reports.append(build_engine(onnx, folder / f"{name}.engine", runtime, targets, profiles).as_dict())
    (folder / "engine_report.json").write_text(json.dumps({"engines": reports}, indent=2) + "\n")
    return folder
