"""Build a TensorRT / TensorRT-RTX engine from the ONNX step network.

One code path for both runtimes (their Python APIs are the same where we use them):
- TensorRT-RTX (`tensorrt_rtx`) builds on a CPU for explicitly listed compute capabilities
  (`config.num_compute_capabilities` + `set_compute_capability`); never `CURRENT`.
- Datacenter TensorRT (`tensorrt`) builds for the GPU it runs on, so it is used only on a host whose GPU
  is the target's (checked by the caller).

Every build keeps the builder's whole log (VERBOSE, with `profiling_verbosity=DETAILED` the per-layer
report) next to the engine, and a summary of it: layers, kernels, fused attention, the targets the
engine embeds. Errors name the stage (parse / build) and carry the builder's own messages.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType

from tqdm import tqdm

from nld.builder import interrupts
from nld.builder.profiles import EngineProfile
from nld.errors import NLDError


@dataclass(frozen=True)
class EngineRuntime:
    name: str
    module: str
    install: str
    explicit_targets: bool  # True: targets are set on the builder config (TensorRT-RTX)


ENGINE_RUNTIMES = {
    runtime.name: runtime
    for runtime in (
        EngineRuntime("tensorrt-rtx", "tensorrt_rtx", "pip install tensorrt-rtx==1.7.1.116", True),
        EngineRuntime("tensorrt", "tensorrt", "pip install tensorrt (on the GPU host, from NVIDIA's index)", False),
    )
}


class EngineBuildError(NLDError):
    """The engine stage failed; the message names the stage and carries the builder's errors."""


@dataclass
class EngineReport:
    """What one build produced, read back from the log and the engine bytes."""

    engine: str
    log: str
    runtime: str
    runtime_version: str
    requested_targets: list[str]
    engine_targets: list[str]
    profiles: list[dict]
    layers: int
    layer_types: dict[str, int]
    fused_attention_layers: int
    seconds: float
    constant_types: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def runtime_module(runtime: EngineRuntime) -> ModuleType | None:
    """The runtime's Python module, or None when it is not installed."""
    if importlib.util.find_spec(runtime.module) is None:
        return None
    return importlib.import_module(runtime.module)


_LAYER = re.compile(
    r"^(?:\[[A-Z_]+\] )?Name: (?P<name>.*?), LayerType: (?P<type>[^,]*),.*TacticName: (?P<tactic>[^,]*),", re.M
)
_FUSED_ATTENTION = re.compile(r"mha|fmha|flash|attention", re.I)
_ENGINE_TARGETS = re.compile(rb"accelerators=\{([^}]*)\}")
_CONSTANTS = re.compile(r"Constants: \[(.*?)\], Outputs:")
_DATATYPE = re.compile(r"Datatype: (\w+)")


def summarize_layers(log_text: str) -> tuple[int, dict[str, int], int]:
    """(layers, count per layer type, layers whose kernel is a fused attention kernel) from the
    per-layer report that a DETAILED build writes to its log (as `build_engine` saves it)."""
    layers = list(_LAYER.finditer(log_text))
    types: dict[str, int] = {}
    for layer in layers:
        types[layer["type"]] = types.get(layer["type"], 0) + 1
    fused = sum(1 for layer in layers if _FUSED_ATTENTION.search(layer["tactic"]))
    return len(layers), types, fused


def constant_types(log_text: str) -> dict[str, int]:
    """How many constants (weights, scales) of each data type the engine's layers hold, from the same
    per-layer report: `Int4` / `FP8` entries are weights kept in that precision."""
    counts: dict[str, int] = {}
    for section in _CONSTANTS.finditer(log_text):
        for kind in _DATATYPE.findall(section[1]):
            counts[kind] = counts.get(kind, 0) + 1
    return counts


def engine_targets(engine: bytes) -> list[str]:
    """The compute capabilities an engine's kernels were compiled for, as it records them (`sm120`, ...);
    the `*` entries of architecture-independent (shape) sections are left out."""
    found = {target for match in _ENGINE_TARGETS.finditer(engine) for target in match[1].decode().split()}
    return sorted(target for target in found if target.startswith("sm"))


def _make_logger(trt: ModuleType, sink: list[str], errors: list[str]) -> object:
    class Logger(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: object, message: str) -> None:
            level = str(severity).rsplit(".", 1)[-1]
            sink.append(f"[{level}] {message}")
            if level in ("ERROR", "INTERNAL_ERROR"):
                errors.append(message)

    return Logger()


def _make_progress(trt: ModuleType, label: str) -> object:
    class Progress(trt.IProgressMonitor):  # type: ignore[name-defined,misc]
        """Top-level builder phases as a progress bar; cancels the build once a stop was requested."""

        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.bar: tqdm | None = None

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                self.bar = tqdm(total=num_steps, desc=f"{label}: {phase_name}", leave=False, unit="step")

        def step_complete(self, phase_name: str, step: int) -> bool:
            """False cancels the build: how a stop signal reaches the native builder."""
            if self.bar is not None and self.bar.desc.endswith(phase_name):
                self.bar.update(1)
            return interrupts.requested() is None

        def phase_finish(self, phase_name: str) -> None:
            if self.bar is not None and self.bar.desc.endswith(phase_name):
                self.bar.close()
                self.bar = None

    return Progress()


def _serialize(
    trt: ModuleType,
    logger: object,
    errors: list[str],
    onnx_path: Path,
    engine_path: Path,
    runtime: EngineRuntime,
    targets: list[str],
    profiles: list[EngineProfile],
) -> bytes:
    """Parse, configure and build; the engine's bytes."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        problems = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)] or errors
        raise EngineBuildError(f"engine stage, ONNX parse of {onnx_path.name}: " + "; ".join(problems))
    if network.num_inputs == 0 or network.num_outputs == 0:  # the parser accepts any bytes as an empty graph
        raise EngineBuildError(
            f"engine stage, ONNX parse of {onnx_path.name}: no inputs or outputs in the graph (not an ONNX model?)"
        )
    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if hasattr(trt.BuilderFlag, "TF32"):  # fp32 graphs compute in fp32 (the precision comes from the ONNX)
        config.clear_flag(trt.BuilderFlag.TF32)
    config.progress_monitor = _make_progress(trt, engine_path.name)
    if runtime.explicit_targets:
        unknown = [t for t in targets if not hasattr(trt.ComputeCapability, t)]
        if unknown or not targets:
            known = [n for n in dir(trt.ComputeCapability) if n.startswith("SM")]
            raise EngineBuildError(f"engine stage: targets {unknown or targets} unknown to {runtime.name} ({known})")
        config.num_compute_capabilities = len(targets)
        for index, target in enumerate(targets):
            config.set_compute_capability(getattr(trt.ComputeCapability, target), index)
    network_inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    for profile in profiles:
        missing = sorted(network_inputs - set(profile.shapes))
        if missing:
            raise EngineBuildError(f"engine stage: profile '{profile.name}' has no shapes for inputs {missing}")
        optimization = builder.create_optimization_profile()
        for name, shapes in profile.shapes.items():
            optimization.set_shape(name, shapes.min, shapes.opt, shapes.max)
        config.add_optimization_profile(optimization)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"engine stage, build of {engine_path.name}: " + ("; ".join(errors) or "failed"))
    return bytes(serialized)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    runtime: EngineRuntime,
    targets: list[str],
    profiles: list[EngineProfile],
) -> EngineReport:
    """Build `onnx_path` into `engine_path` (atomically), keeping `<engine>.build.log` beside it.
    `targets` are compute-capability names (`SM120`); used only by runtimes with explicit targets."""
    trt = runtime_module(runtime)
    if trt is None:
        raise EngineBuildError(f"engine stage: the '{runtime.module}' module is not installed ({runtime.install})")
    started = time.perf_counter()
    lines: list[str] = []
    errors: list[str] = []
    logger = _make_logger(trt, lines, errors)
    log_path = engine_path.with_suffix(".build.log")
    try:
        # Held: the builder calls back into Python (logger, progress), where a signal must not raise; a
        # stop request cancels the build through the progress monitor and leaving raises Interrupted.
        with interrupts.held():
            engine = _serialize(trt, logger, errors, onnx_path, engine_path, runtime, targets, profiles)
    except NLDError:
        raise
    except Exception as error:  # the bindings raise plain Python errors (bad shapes, bad enums)
        detail = "; ".join([str(error), *errors])
        raise EngineBuildError(f"engine stage, {engine_path.name}: {runtime.name} failed: {detail}") from error
    finally:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("\n".join(lines) + "\n")
    handle, partial = tempfile.mkstemp(prefix=f".{engine_path.name}.", dir=engine_path.parent)
    with os.fdopen(handle, "wb") as stream:
        stream.write(engine)
    os.replace(partial, engine_path)
    layers, layer_types, fused = summarize_layers("\n".join(lines))
    return EngineReport(
        engine=engine_path.name,
        log=log_path.name,
        runtime=runtime.name,
        runtime_version=trt.__version__,
        requested_targets=list(targets),
        engine_targets=engine_targets(engine),
        profiles=[profile.as_dict() for profile in profiles],
        layers=layers,
        layer_types=layer_types,
        fused_attention_layers=fused,
        constant_types=constant_types("\n".join(lines)),
        seconds=round(time.perf_counter() - started, 3),
        warnings=[line for line in lines if line.startswith("[WARNING]")],
    )
