"""The ONNX and engine stages of nld-build.

- onnx: the step network of the checkpoint in the build precision (`onnx/step.onnx`, and
  `onnx/step_adapter.onnx` when the checkpoint has a draft adapter), for targets that build engines;
  for fp8 / int4-awq the network of the quantized checkpoint with standard Q/DQ (onnx_qdq.py).
- engine: one engine per graph (`engine/step.engine`, ...) with its build log and a report
  (`engine/engine_report.json`). TensorRT-RTX targets build here for their explicit compute capability;
  the datacenter target builds with TensorRT only on a host whose GPU is that target, and otherwise
  records the exact command that builds it there.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from nld.builder.export_child import export_graph
from nld.builder.profiles import EngineProfile, trtexec_shape_flags
from nld.builder.skus import Sku
from nld.builder.stages import StageRecord
from nld.builder.trt_engine import ENGINE_RUNTIMES, EngineRuntime, build_engine, runtime_module
from nld.checkpoint import load_checkpoint
from nld.errors import NLDError

GRAPHS = {"step": False, "step_adapter": True}  # graph name -> draft adapter on
Log = Callable[[str], None]


def sku_targets(sku: Sku) -> list[str]:
    """TensorRT's compute-capability names for a SKU ("12.0" -> ["SM120"])."""
    return [f"SM{sku.compute_capability.replace('.', '')}"] if sku.compute_capability else []


def check_engine_runtime(sku: Sku) -> None:
    """Refuse, before any work, a target whose engines must build here but whose builder is missing."""
    if sku.engine_builder is None:
        return
    runtime = ENGINE_RUNTIMES[sku.engine_builder]
    if runtime.explicit_targets and importlib.util.find_spec(runtime.module) is None:
        raise NLDError(
            f"target '{sku.name}' builds {runtime.name} engines, but the '{runtime.module}' module is not "
            f"installed: {runtime.install}"
        )


def onnx_stage(model_dir: Path, precision: str, staging: Path, log: Log) -> tuple[StageRecord, dict[str, Path]]:
    """Export the step graphs in the build precision; returns the record and {graph name: path}."""
    began = time.perf_counter()
    has_adapter = load_checkpoint(model_dir, with_adapter=True).adapter is not None
    graphs = {name: adapter for name, adapter in GRAPHS.items() if not adapter or has_adapter}
    paths = {}
    for name, adapter in tqdm(graphs.items(), desc="onnx export", unit="graph", file=sys.stderr, disable=None):
        log(f"exporting the {name} network to ONNX ({precision}) ...")
        path = staging / "onnx" / f"{name}.onnx"
        paths[name] = export_graph(model_dir, precision, path, adapter)  # in a child: stops promptly
    artifacts = sorted(str(path.relative_to(staging)) for path in (staging / "onnx").iterdir())  # graphs + weights
    return StageRecord("onnx", True, artifacts, seconds=time.perf_counter() - began), paths


def _gpu_matches(sku: Sku) -> bool:
    if not torch.cuda.is_available():
        return False
    major, minor = torch.cuda.get_device_capability()
    return f"{major}.{minor}" == sku.compute_capability


def _remote_command(sku: Sku, output: Path, profiles: list[EngineProfile], graphs: dict[str, Path]) -> str:
    commands = [
        f"trtexec --onnx={output}/onnx/{name}.onnx --saveEngine={output}/engine/{name}.engine "
        f"--profilingVerbosity=detailed --exportLayerInfo={output}/engine/{name}.layers.json "
        f"{trtexec_shape_flags(profiles)}"
        for name in graphs
    ]
    return " && ".join(commands)


def engine_stage(
    sku: Sku, profiles: list[EngineProfile], graphs: dict[str, Path], staging: Path, output: Path, log: Log
) -> StageRecord:
    """Build every graph into an engine for `sku`, or record why not and how to finish elsewhere."""
    if sku.engine_builder is None:
        return StageRecord("engine", False, reason=f"target '{sku.name}' runs the torch backend; no engine")
    runtime: EngineRuntime = ENGINE_RUNTIMES[sku.engine_builder]
    if not runtime.explicit_targets and (runtime_module(runtime) is None or not _gpu_matches(sku)):
        return StageRecord(
            "engine",
            False,
            reason=f"datacenter TensorRT builds for the GPU it runs on: it needs a {sku.description} "
            f"(SM {sku.compute_capability}) with the '{runtime.module}' module; this host has neither",
            command=_remote_command(sku, output, profiles, graphs),
        )
    began = time.perf_counter()
    folder = staging / "engine"
    folder.mkdir(parents=True, exist_ok=True)
    reports = []
    for name, onnx_path in graphs.items():
        log(f"building the {name} engine with {runtime.name} for {', '.join(sku_targets(sku)) or 'this GPU'} ...")
        report = build_engine(onnx_path, folder / f"{name}.engine", runtime, sku_targets(sku), profiles)
        reports.append(report.as_dict())
        log(
            f"  {report.engine}: {report.layers} layers, {report.fused_attention_layers} fused attention, "
            f"targets {', '.join(report.engine_targets) or '-'}, {report.seconds:.1f} s"
        )
    (folder / "engine_report.json").write_text(json.dumps({"engines": reports}, indent=2) + "\n")
    artifacts = sorted(str(path.relative_to(staging)) for path in folder.iterdir())
    details = {
        "runtime": runtime.name,
        "targets": sku_targets(sku),
        "engines": {
            r["engine"]: {
                "targets": r["engine_targets"],
                "fused_attention_layers": r["fused_attention_layers"],
                "constant_types": r["constant_types"],
            }
            for r in reports
        },
        "profiles": [profile.as_dict() for profile in profiles],
    }
    return StageRecord("engine", True, artifacts, seconds=time.perf_counter() - began, details=details)
