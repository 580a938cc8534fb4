"""nld-build end to end on a fixture: outputs, an honest manifest, refusals before work, atomic output."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest

import nld.builder.pipeline as pipeline
from nld.builder.artifacts import sha256
from nld.builder.cli import build_parser, main
from nld.builder.pipeline import BuildRequest, build
from nld.builder.skus import SKUS
from nld.errors import NLDError
from nld.models import default_model_dir
from tests.conftest import fixture_dir


def request(tmp_path: Path, **changes: object) -> BuildRequest:
    values = {"model": fixture_dir("tiny_b8"), "target": "gb200", "precision": "bf16", "output": tmp_path / "out"}
    return BuildRequest(**{**values, **changes})  # type: ignore[arg-type]


def test_gb200_bf16_build_writes_checkpoint_repository_and_manifest(tmp_path: Path) -> None:
    out = build(request(tmp_path, tp=2), log=lambda line: None)
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {stage["name"]: stage for stage in manifest["stages"]}
    assert stages["trtllm_checkpoint"]["built"] and stages["triton_repository"]["built"]
    engine, trtllm_engine = stages["engine"], stages["trtllm_engine"]
    assert stages["onnx"]["built"] and (out / "onnx" / "step.onnx").exists()
    assert not engine["built"] and "datacenter TensorRT builds for the GPU it runs on" in engine["reason"]
    assert engine["command"].startswith(f"trtexec --onnx={out}/onnx/step.onnx --saveEngine={out}/engine/step.engine")
    assert engine["command"].count("--minShapes=") == 2  # the decode and prefill profiles
    assert not trtllm_engine["built"] and "not available here" in trtllm_engine["reason"]
    command = trtllm_engine["command"]
    assert command.startswith("trtllm-build --checkpoint_dir") and "--max_batch_size 16" in command
    assert (out / "trtllm_checkpoint" / "rank1.safetensors").exists()
    assert (out / "triton_repo" / "nld" / "config.pbtxt").exists()
    for name, digest in manifest["artifacts"].items():
        assert sha256(out / name) == digest, name
    assert manifest["inputs"]["files"]["model.safetensors"] == sha256(fixture_dir("tiny_b8") / "model.safetensors")
    assert manifest["target"]["cuda_arch"] == "sm_100a" and manifest["plan"]["precision"] == "bf16"
    assert manifest["versions"]["tensorrt_llm"] == "not installed"
    served = json.loads((out / "triton_repo" / "nld_repository.json").read_text())
    assert (served["backend"], served["device"], served["build_dir"]) == ("torch", "cuda", "")
    assert served["model_dir"] == "../model" and (out / "model" / "model.safetensors").is_file()
    assert manifest["served"] == {"model_dir": "model", "backend": "torch", "dtype": "float32", "artifacts": False}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": Path("/nonexistent/model")}, "/nonexistent/model"),
        ({"target": "h100"}, "unknown target 'h100'"),
        ({"target": "cpu", "precision": "nvfp4"}, "does not support precision 'nvfp4'"),
        ({"tp": 8}, "tp 8 does not divide num_attention_heads 4"),
        ({"precision": "int4-awq"}, "int4-awq packs weights in blocks of 128 in-features: .*q_proj has 64"),
        ({"precision": "nvfp4"}, "nvfp4 calibration needs a CUDA GPU|does not build nvfp4"),
        ({"precision": "fp8", "calibration": Path("/nonexistent/calib.txt")}, "--calib /nonexistent/calib.txt"),
        ({"precision": "fp8", "calib_samples": 0}, "--samples must be >= 1"),
        ({"precision": "fp8"}, "tiny_b8: no tokenizer.json; fp8 calibration text must be tokenized"),
        ({"modes": ("ar", "beam")}, "unknown modes"),
        ({"max_context": 8, "target": "rtx-pro-6000"}, "does not fit a context of 8 tokens"),
    ],
)
def test_bad_requests_fail_before_any_work(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(NLDError, match=message):
        build(request(tmp_path, **changes), log=lambda line: None)
    assert not list(tmp_path.iterdir())


def test_gb200_fp8_build_quantizes_then_exports_the_quantized_network(tmp_path: Path) -> None:
    changes = {"model": default_model_dir(), "precision": "fp8", "calib_samples": 2, "kv_cache": "fp8"}
    out = build(request(tmp_path, **changes), log=lambda line: None)
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {stage["name"]: stage for stage in manifest["stages"]}
    quantize = stages["quantize"]
    assert quantize["built"] and quantize["details"]["samples"] == 2 and quantize["details"]["kv_cache"] == "fp8"
    assert "quantized/hf_quant_config.json" in manifest["artifacts"]
    quantization = json.loads((out / "trtllm_checkpoint" / "config.json").read_text())["quantization"]
    assert (quantization["quant_algo"], quantization["kv_cache_quant_algo"]) == ("FP8", "FP8")
    graph = onnx.load(str(out / "onnx" / "step.onnx"), load_external_data=False).graph
    assert sum(node.op_type == "QuantizeLinear" for node in graph.node) > 0
    assert stages["engine"]["command"].startswith(f"trtexec --onnx={out}/onnx/step.onnx")
    served = json.loads((out / "triton_repo" / "nld_repository.json").read_text())
    assert served["model_dir"] == "../quantized"  # relative to triton_repo/: the build can move
    for name, digest in manifest["artifacts"].items():
        assert sha256(out / name) == digest, name


def test_an_already_quantized_model_is_refused(tmp_path: Path, quantized_builtin: Callable[..., Path]) -> None:
    with pytest.raises(NLDError, match="is already quantized"):
        build(request(tmp_path, model=quantized_builtin("int4-awq")), log=lambda line: None)
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(NLDError, match="pass --force"):
        build(request(tmp_path), log=lambda line: None)
    assert (tmp_path / "out" / "keep.txt").exists()
    build(request(tmp_path, force=True), log=lambda line: None)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "manifest.json").exists()


def test_interrupted_build_leaves_no_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_repository", interrupted)  # fail in the stage after the export
    with pytest.raises(KeyboardInterrupt):
        build(request(tmp_path), log=lambda line: None)
    assert not list(tmp_path.iterdir())  # neither OUT nor a staging folder


def test_cli_build_and_refusal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(fixture_dir("tiny_b8"))
    argv = ["--model", model, "--target", "rtx-pro-6000", "--precision", "fp16", "--output", str(tmp_path / "o")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "engine: built" in captured.err and (tmp_path / "o" / "engine" / "step.engine").exists()
    assert main(argv) == 2 and "pass --force" in capsys.readouterr().err


def test_model_defaults_to_the_builtin_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", "cpu", "--precision", "bf16", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["context"] == json.loads((default_model_dir() / "config.json").read_text())["max_position_embeddings"]
    assert "default: the built-in tiny model" in " ".join(build_parser().format_help().split())


@pytest.mark.parametrize("target", list(SKUS))
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_every_target_builds_every_precision_nld_build_runs_here(tmp_path: Path, target: str, precision: str) -> None:
    out = build(request(tmp_path, target=target, precision=precision), log=lambda line: None)
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {stage["name"]: stage for stage in manifest["stages"]}
    assert stages["trtllm_checkpoint"]["built"] and stages["triton_repository"]["built"]
    engine_built = SKUS[target].engine_builder == "tensorrt-rtx"  # gb200 needs its GPU; cpu builds none
    assert stages["engine"]["built"] == engine_built and (engine_built or stages["engine"]["reason"])
    config = json.loads((out / "trtllm_checkpoint" / "config.json").read_text())
    assert config["dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[precision]
