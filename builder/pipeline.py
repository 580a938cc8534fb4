"""`nld-build` as a library: check everything, then run the stages into a staged output folder.

Stages: plan -> (quantize) -> TRT-LLM checkpoint -> ONNX step network -> engine -> Triton repository ->
manifest. A stage that cannot run here is recorded in the manifest as not built, with the reason and,
where one exists, the exact command that finishes it on a GPU host. Nothing is faked, nothing is
skipped silently.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from nld.builder import interrupts
from nld.builder.artifacts import MODEL_DIR, copy_model, hash_files
from nld.builder.engine_stage import check_engine_runtime, engine_stage, onnx_stage
from nld.builder.plan import BuildPlan, make_plan
from nld.builder.profiles import EngineProfile, engine_profiles
from nld.builder.quantize_stage import COMPUTE_PRECISION, check_quantization, is_quantized, quantize_stage
from nld.builder.skus import Sku, get_sku
from nld.builder.stages import StageRecord
from nld.checkpoint import QUANT_CONFIG_FILE, load_checkpoint
from nld.convert.trtllm import check_tp, export_trtllm
from nld.errors import NLDError
from nld.modes import MODES
from nld.serving.repository import RepositorySettings, write_repository
from nld.staging import staged_directory

EXPORT_DTYPE = {"bf16": "bfloat16", "fp16": "float16"}
Log = Callable[[str], None]


@dataclass(frozen=True)
class BuildRequest:
    model: Path
    target: str
    precision: str
    output: Path
    tp: int = 1
    max_batch: int = 16
    max_context: int | None = None
    force: bool = False
    modes: tuple[str, ...] = tuple(MODES)
    max_prefill: int = 1024
    calibration: Path | None = None  # quantized precisions: text/JSONL file (None: the built-in set)
    calib_samples: int = 64
    kv_cache: str | None = None  # quantized precisions: "fp8" for an FP8 KV cache


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("nld", "torch", "safetensors", "numpy", "onnx", "tensorrt", "tensorrt_llm", "tensorrt-rtx"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def check_request(request: BuildRequest) -> tuple[Sku, BuildPlan, list[EngineProfile]]:
    """Every check that can fail, before any work. Returns (sku, plan, engine profiles)."""
    sku = get_sku(request.target)
    # Reads every tensor once: names the file/tensor at fault, refuses NaN/Inf and a bad draft adapter.
    checkpoint = load_checkpoint(request.model, nonfinite="error")
    if (Path(request.model) / QUANT_CONFIG_FILE).exists():
        raise NLDError(
            f"{request.model} is already quantized ({QUANT_CONFIG_FILE}); build from the unquantized checkpoint "
            f"with --precision fp8 or int4-awq, which quantizes it in the build"
        )
    plan = make_plan(checkpoint.config, sku, request.precision, request.max_context, kv_cache=request.kv_cache)
    if is_quantized(request.precision):
        if request.calib_samples < 1:
            raise NLDError(f"--samples must be >= 1, got {request.calib_samples}")
        check_quantization(
            Path(request.model), request.precision, checkpoint.config, request.calibration, request.kv_cache
        )
    check_tp(checkpoint.config, request.tp)
    output = Path(request.output)
    if output.exists() and any(output.iterdir()) and not request.force:
        raise NLDError(f"{output} exists and is not empty; pass --force to replace it")
    if request.max_batch < 1:
        raise NLDError(f"--max-batch must be >= 1, got {request.max_batch}")
    if request.max_prefill < 1:
        raise NLDError(f"--max-prefill must be >= 1, got {request.max_prefill}")
    profiles = engine_profiles(
        checkpoint.config,
        plan.step_tokens,
        plan.context,
        request.max_batch,
        request.modes,
        request.max_prefill,
        plan.step_positions,
    )
    check_engine_runtime(sku)
    return sku, plan, profiles


def _repository_settings(
    request: BuildRequest, sku: Sku, engines_built: bool, served: str
) -> tuple[RepositorySettings, str]:
    """The served model runs the built engines when there are any, else the checkpoint (`served`: its
    folder inside OUT) with torch. Paths are relative to the repository root (OUT/triton_repo), so the
    build can move."""
    model = f"../{served}"
    if engines_built:
        settings = RepositorySettings(model, "tensorrt", "..", device="cuda", max_batch=request.max_batch)
        return settings, "serves the engines with the tensorrt backend (needs the target GPU)"
    device = "cpu" if sku.engine_builder is None else "cuda"
    settings = RepositorySettings(model, device=device, max_batch=request.max_batch)
    return settings, f"serves the checkpoint with the torch backend on {device} (no engine built here)"


def _trtllm_build_command(request: BuildRequest, context: int) -> str:
    return (
        f"trtllm-build --checkpoint_dir {request.output}/trtllm_checkpoint --output_dir {request.output}/trtllm_engine "
        f"--max_batch_size {request.max_batch} --max_seq_len {context} --gemm_plugin auto"
    )


def build(request: BuildRequest, log: Log = print) -> Path:
    """Run the whole build into `request.output` (written atomically); returns the output path."""
    sku, plan, profiles = check_request(request)
    started = time.perf_counter()
    stages: list[StageRecord] = []
    with staged_directory(request.output) as staging:
        (staging / "plan.json").write_text(json.dumps(plan.as_dict(), indent=2) + "\n")
        stages.append(StageRecord("plan", True, ["plan.json"]))
        quantized, source = quantize_stage(
            Path(request.model),
            request.precision,
            staging,
            request.calibration,
            request.calib_samples,
            request.kv_cache,
            log,
        )
        stages.append(quantized)
        compute = COMPUTE_PRECISION[request.precision]

        log(f"exporting the TRT-LLM checkpoint (tp {request.tp}, {EXPORT_DTYPE[compute]}) ...")
        began = time.perf_counter()
        export_trtllm(source, staging / "trtllm_checkpoint", request.tp, EXPORT_DTYPE[compute], True)
        files = sorted(str(p.relative_to(staging)) for p in (staging / "trtllm_checkpoint").iterdir())
        stages.append(StageRecord("trtllm_checkpoint", True, files, seconds=time.perf_counter() - began))

        if sku.engine_builder is None:
            stages.append(StageRecord("onnx", False, reason=f"target '{sku.name}' builds no engine"))
            engine = StageRecord("engine", False, reason=f"target '{sku.name}' runs the torch backend")
        else:
            record, graphs = onnx_stage(source, request.precision, staging, log)
            stages.append(record)
            engine = engine_stage(sku, profiles, graphs, staging, Path(request.output), log)
        stages.append(engine)
        if sku.engine_builder == "tensorrt":
            stages.append(
                StageRecord(
                    "trtllm_engine",
                    False,
                    reason="datacenter TensorRT-LLM and a GPU are not available here",
                    command=_trtllm_build_command(request, plan.context),
                )
            )

        if not quantized.built:  # the build carries its checkpoint: OUT serves without the source
            log(f"copying the checkpoint into {MODEL_DIR}/ ...")
            stages.append(StageRecord(MODEL_DIR, True, copy_model(Path(request.model), staging / MODEL_DIR)))
            source = staging / MODEL_DIR
        log("writing the Triton model repository ...")
        served = str(source.relative_to(staging))
        settings, note = _repository_settings(request, sku, engine.built, served)
        write_repository(staging / "triton_repo", settings, staged_model=source)
        repo_files = sorted(str(p.relative_to(staging)) for p in (staging / "triton_repo").rglob("*") if p.is_file())
        stages.append(StageRecord("triton_repository", True, repo_files, reason=note))

        log("hashing inputs and artifacts ...")
        model_dir = Path(request.model).resolve()
        inputs = hash_files(
            model_dir, [str(p.relative_to(model_dir)) for p in sorted(model_dir.rglob("*")) if p.is_file()]
        )
        artifacts = hash_files(staging, [name for stage in stages for name in stage.artifacts])
        manifest = {
            "request": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()},
            "target": asdict(sku),
            "precision": request.precision,
            "plan": plan.as_dict(),
            "inputs": {"model_dir": str(model_dir), "files": inputs},
            "versions": _versions(),
            "stages": [asdict(stage) for stage in stages],
            "artifacts": artifacts,
            "served": {  # what `--build OUT` implies (nld generate, nld repo, nld serve-openai, nld bench)
                "model_dir": served,
                "backend": settings.backend,
                "dtype": settings.dtype,
                "artifacts": engine.built,
            },
            "seconds": round(time.perf_counter() - started, 3),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        interrupts.finishing()  # complete: a stop signal from here on no longer cuts the rename short
    for stage in stages:
        state = "built" if stage.built else "NOT built"
        log(f"  {stage.name}: {state}" + (f" ({stage.reason})" if stage.reason else ""))
        if stage.command:
            log(f"    finish on a GPU host: {stage.command}")
    return Path(request.output)
