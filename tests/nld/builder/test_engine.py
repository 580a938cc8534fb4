"""Real TensorRT-RTX engine builds on the CPU, per RTX-class SKU, from a fixture model's step network.

The checks read the artifacts themselves: the engine's embedded compute-capability targets, and the
builder's own per-layer log (fused attention kernels, the number of targets)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import nld.builder.engine_stage as engine_stage
from nld.builder.artifacts import sha256
from nld.builder.pipeline import BuildRequest, build
from nld.builder.plan import step_tokens
from nld.builder.profiles import EngineProfile, ShapeRange, engine_profiles
from nld.builder.skus import SKUS
from nld.builder.trt_engine import ENGINE_RUNTIMES, EngineBuildError, build_engine, summarize_layers
from nld.config import load_config
from nld.errors import NLDError
from nld.models import default_model_dir
from tests.conftest import fixture_dir

RTX_TARGETS = {name: sku for name, sku in SKUS.items() if sku.engine_builder == "tensorrt-rtx"}
EXPECTED_TARGET = {"rtx-pro-6000": "sm120", "dgx-spark": "sm121"}
MODEL = "tiny_b8_spec_lora"  # has a draft adapter: two graphs, two engines


@pytest.fixture(scope="module", params=sorted(RTX_TARGETS))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp(request.param) / "out"
    build(BuildRequest(fixture_dir(MODEL), request.param, "fp16", out), log=lambda line: None)
    return request.param, out


def test_rtx_targets_are_the_expected_skus() -> None:
    assert set(RTX_TARGETS) == set(EXPECTED_TARGET)


def test_engines_are_built_for_the_target_and_listed_with_hashes(built: tuple[str, Path]) -> None:
    target, out = built
    manifest = json.loads((out / "manifest.json").read_text())
    engine = {stage["name"]: stage for stage in manifest["stages"]}["engine"]
    assert engine["built"] and engine["details"]["targets"] == [f"SM{SKUS[target].compute_capability.replace('.', '')}"]
    for name in ("step", "step_adapter"):
        path = out / "engine" / f"{name}.engine"
        assert manifest["artifacts"][f"engine/{name}.engine"] == sha256(path)
        assert f"engine/{name}.build.log" in manifest["artifacts"]
        # The engine itself records what its kernels were compiled for.
        assert f"accelerators={{{EXPECTED_TARGET[target]} }}".encode() in path.read_bytes()
        assert engine["details"]["engines"][f"{name}.engine"]["targets"] == [EXPECTED_TARGET[target]]
    assert manifest["versions"]["tensorrt-rtx"] == ENGINE_RUNTIMES["tensorrt-rtx"].install.split("==")[1]
    served = json.loads((out / "triton_repo" / "nld_repository.json").read_text())
    assert (served["backend"], served["device"], served["build_dir"]) == ("tensorrt", "cuda", "..")
    assert (
        'key: "build_dir" value: { string_value: ".." }' in (out / "triton_repo" / "nld" / "config.pbtxt").read_text()
    )


def test_build_log_shows_targets_and_fused_attention_in_every_layer(built: tuple[str, Path]) -> None:
    _, out = built
    layers = load_config(fixture_dir(MODEL)).num_hidden_layers
    report = json.loads((out / "engine" / "engine_report.json").read_text())
    for entry in report["engines"]:
        log = (out / "engine" / entry["log"]).read_text()
        assert "Number of target compute capabilities: 1" in log
        assert "_gemm_mha" in log  # the hand-written MatMul/Softmax attention fused into the MHA kernel
        count, types, fused = summarize_layers(log)
        assert count > 0 and types.get("gemm", 0) > 0
        assert fused == layers * len(entry["profiles"]) == entry["fused_attention_layers"]


def test_bad_onnx_fails_the_engine_stage_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(model_dir: Path, precision: str, path: Path, adapter: bool) -> Path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"this is not an ONNX protobuf")
        return Path(path)

    monkeypatch.setattr(engine_stage, "export_graph", broken_export)
    request = BuildRequest(fixture_dir("tiny_b8"), "rtx-pro-6000", "fp16", tmp_path / "out")
    with pytest.raises(EngineBuildError, match=r"engine stage, ONNX parse of step\.onnx: no inputs or outputs"):
        build(request, log=lambda line: None)
    assert not list(tmp_path.iterdir())


def test_failing_build_surfaces_the_builders_error(tmp_path: Path) -> None:
    config = load_config(fixture_dir("tiny_b8"))
    decode = engine_profiles(config, step_tokens(config), 256, 4, ("ar",))[0]
    shapes = dict(decode.shapes)
    bias = shapes["attention_bias"]
    shapes["attention_bias"] = ShapeRange(bias.min, bias.opt, (4, 1, 1, 7))  # max below opt
    onnx = engine_stage.onnx_stage(fixture_dir("tiny_b8"), "fp16", tmp_path, lambda line: None)[1]["step"]
    runtime = ENGINE_RUNTIMES["tensorrt-rtx"]
    with pytest.raises(EngineBuildError, match=r"engine stage, build of x\.engine: .*satisfy MIN<=OPT<=MAX"):
        build_engine(onnx, tmp_path / "x.engine", runtime, ["SM120"], [EngineProfile("bad", shapes)])
    with pytest.raises(EngineBuildError, match=r"profile 'partial' has no shapes for inputs \['attention_bias'"):
        build_engine(onnx, tmp_path / "x.engine", runtime, ["SM120"], [EngineProfile("partial", {})])
    with pytest.raises(EngineBuildError, match=r"targets \['SM90'\] unknown to tensorrt-rtx"):
        build_engine(onnx, tmp_path / "x.engine", runtime, ["SM90"], [decode])
    assert not (tmp_path / "x.engine").exists() and (tmp_path / "x.build.log").exists()


def test_missing_builder_module_is_refused_before_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = ENGINE_RUNTIMES["tensorrt-rtx"].__class__("tensorrt-rtx", "tensorrt_rtx_absent", "pip install x", True)
    monkeypatch.setitem(engine_stage.ENGINE_RUNTIMES, "tensorrt-rtx", missing)
    request = BuildRequest(fixture_dir("tiny_b8"), "dgx-spark", "fp16", tmp_path / "out")
    with pytest.raises(NLDError, match="'tensorrt_rtx_absent' module is not installed: pip install x"):
        build(request, log=lambda line: None)
    assert not list(tmp_path.iterdir())


QUANTIZED_WEIGHT_TYPE = {"int4-awq": "Int4", "fp8": "FP8"}  # TensorRT's names in the per-layer report


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "kv_cache"), [("int4-awq", None), ("fp8", "fp8")])
def test_quantized_networks_build_rtx_engines_that_keep_low_precision_weights(
    tmp_path: Path, precision: str, kv_cache: str | None
) -> None:
    model = default_model_dir()
    request = BuildRequest(
        model, "rtx-pro-6000", precision, tmp_path / "out", max_batch=2, calib_samples=4, kv_cache=kv_cache
    )
    out = build(request, log=lambda line: None)
    manifest = json.loads((out / "manifest.json").read_text())
    stages = {stage["name"]: stage for stage in manifest["stages"]}
    assert stages["quantize"]["built"] and stages["engine"]["built"]
    linears = 7 * load_config(model).num_hidden_layers
    profiles = len(stages["engine"]["details"]["profiles"])
    for name in ("step", "step_adapter"):
        engine = stages["engine"]["details"]["engines"][f"{name}.engine"]
        assert engine["targets"] == ["sm120"]
        # Every quantized linear's weight is an Int4 / FP8 constant of the engine, in each profile.
        assert engine["constant_types"].get(QUANTIZED_WEIGHT_TYPE[precision]) == linears * profiles
        # Attention still fuses into the MHA kernel in every layer and profile (the draft LoRA included).
        assert engine["fused_attention_layers"] == load_config(model).num_hidden_layers * profiles
        assert b"accelerators={sm120 }" in (out / "engine" / f"{name}.engine").read_bytes()


@pytest.mark.slow
def test_a_short_context_model_builds_engines_for_every_default_mode(tmp_path: Path) -> None:
    """Context 128 with block 16: the 272-token quadratic step spans 32 positions, so it fits."""
    model = tmp_path / "short"
    shutil.copytree(default_model_dir(), model, ignore=shutil.ignore_patterns("linear_spec_lora"))  # one graph
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 128, "block_size": 16}))
    out = build(BuildRequest(model, "rtx-pro-6000", "fp16", tmp_path / "out"), log=lambda line: None)
    manifest = json.loads((out / "manifest.json").read_text())
    engine = next(stage for stage in manifest["stages"] if stage["name"] == "engine")
    assert engine["built"] and (out / "engine" / "step.engine").stat().st_size > 0
    decode = engine["details"]["profiles"][0]["shapes"]
    assert decode["input_ids"][2] == [16, 272] and decode["past_key_values.0.key"][2][2] == 127
    assert decode["attention_bias"][2] == [16, 1, 272, 127 + 272]
