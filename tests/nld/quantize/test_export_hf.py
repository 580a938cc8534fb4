"""The unified HF export: written by ModelOpt's helpers, read back by our loader to the same weights."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from nld.backends import TorchBackend
from nld.checkpoint import load_checkpoint
from nld.generate import generate
from nld.model import NLDTransformer
from nld.models import default_model_dir
from nld.modes import GenerationParams
from nld.quantize.calibration import calibration_windows, read_texts
from nld.quantize.export_hf import export_quantized_hf
from nld.quantize.hf_format import unpack_int4
from nld.quantize.ptq import FUSED_LINEARS, quantize_model
from nld.quantize.recipes import RECIPES
from nld.tokenizer import NLDTokenizer
from tests.conftest import fixture_dir

# Scales that linears fused at deployment (q/k/v, gate/up) must share in the export.
SHARED_SCALES = {"fp8": ("input_scale", "weight_scale"), "int4-awq": ("pre_quant_scale",)}


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return calibration_windows(NLDTokenizer.from_dir(default_model_dir()), read_texts(None)[:20], 4, 64)


def effective_weights(model: NLDTransformer) -> dict[str, torch.Tensor]:
    """What each fake-quantized linear multiplies its input by: Q(W), times the AWQ input scale."""
    import modelopt.torch.quantization as mtq

    quantized = {
        n
        for n, m in model.named_modules()
        if getattr(m, "weight_quantizer", None) is not None and m.weight_quantizer.is_enabled
    }
    folded = copy.deepcopy(model)
    mtq.fold_weight(folded)  # weights replaced by their quantized values
    weights = {}
    for name, module in folded.named_modules():
        if name in quantized:
            scale = getattr(module.input_quantizer, "_pre_quant_scale", None)
            weight = module.weight.detach().float()
            weights[f"{name}.weight"] = weight * scale.float().reshape(1, -1) if scale is not None else weight
    return weights


@pytest.mark.parametrize(("precision", "dtype"), [("fp8", torch.float8_e4m3fn), ("int4-awq", torch.uint8)])
def test_export_reads_back_to_the_fake_quantized_weights(
    tmp_path: Path, windows: torch.Tensor, precision: str, dtype: torch.dtype
) -> None:
    source = default_model_dir()
    reference = NLDTransformer.from_checkpoint(load_checkpoint(source, with_adapter=False), torch.float32)
    model = quantize_model(reference, RECIPES[precision], windows, progress=False)
    out = export_quantized_hf(model, RECIPES[precision], source, tmp_path / "q")
    quant = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert quant["quant_algo"] == RECIPES[precision].quant_algo and quant["group_size"] == RECIPES[precision].group_size
    config = json.loads((out / "config.json").read_text())
    source_config = json.loads((source / "config.json").read_text())
    assert set(config) == set(source_config) | {"quantization_config"}
    for field, value in source_config.items():  # every source field carried over unchanged
        assert config[field] == value, field
    assert config["quantization_config"] == {"quant_method": "modelopt", **quant}
    producer = json.loads((out / "hf_quant_config.json").read_text())["producer"]
    assert producer == {"name": "modelopt", "version": "0.47.0"}
    assert quant["kv_cache_quant_algo"] is None and quant["exclude_modules"] == ["diffusion_head", "embed_tokens"]
    assert (out / "tokenizer.json").exists() and (out / "linear_spec_lora").is_dir()
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        q_proj = handle.get_tensor("encoder.layers.0.self_attn.q_proj.weight")
        assert q_proj.dtype == dtype and handle.get_tensor("diffusion_head.weight").dtype == torch.bfloat16
        for layer in range(reference.config.num_hidden_layers):
            for group in FUSED_LINEARS:
                names = [f"encoder.layers.{layer}.{name}" for name in group]
                for suffix in SHARED_SCALES[precision]:
                    first = handle.get_tensor(f"{names[0]}.{suffix}")
                    assert all(torch.equal(handle.get_tensor(f"{n}.{suffix}"), first) for n in names[1:]), names
    loaded = load_checkpoint(out)
    expected = effective_weights(model)
    assert len(expected) == 7 * reference.config.num_hidden_layers
    for name, weight in expected.items():
        if precision == "int4-awq":
            torch.testing.assert_close(loaded.weights[name], weight, rtol=1e-2, atol=1e-6)
        else:
            # ModelOpt's CPU fp8 fake-quant rounds a few values near grid midpoints the other way than
            # the export's cast to float8 (which is what TensorRT consumes): at most one e4m3 step apart.
            step = (loaded.weights[name] - weight).abs() / torch.maximum(loaded.weights[name].abs(), weight.abs())
            off = step.nan_to_num(0.0) > 1e-3
            assert off.float().mean() < 0.015 and step.nan_to_num(0.0).max() <= 0.125 + 1e-6, name
    if precision == "int4-awq":  # weight-only: the dequantized network computes what the fake-quant one does
        prompt = windows[0, :32].tolist()
        params = GenerationParams(max_new_tokens=12)
        ours = TorchBackend(NLDTransformer.from_checkpoint(loaded, torch.float32))
        assert (
            generate(ours, prompt, "ar", params).new_ids == generate(TorchBackend(model), prompt, "ar", params).new_ids
        )


def test_int4_unpacking_inverts_modelopt_packing() -> None:
    from modelopt.torch.export.quant_utils import pack_int4_in_uint8

    values = torch.randint(-8, 8, (6, 256)).float()
    packed = pack_int4_in_uint8(values, torch.ones(6, 2), 128)
    assert packed.shape == (3, 256) and packed.dtype == torch.uint8
    assert torch.equal(unpack_int4(packed).float(), values)


def test_quantize_cli_refusals_leave_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nld.cli import main

    out = tmp_path / "q"
    assert main(["quantize", "--precision", "nvfp4", "--output", str(out)]) == 2
    assert "nvfp4 calibration needs a CUDA GPU" in capsys.readouterr().err and not out.exists()
    fixture_model = str(fixture_dir("tiny_b8"))
    assert main(["quantize", "--model", fixture_model, "--precision", "int4-awq", "--output", str(out)]) == 2
    assert "q_proj has 64" in capsys.readouterr().err and not out.exists()
    out.mkdir()
    (out / "keep").write_text("x")
    assert main(["quantize", "--precision", "fp8", "--output", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err and (out / "keep").exists()


def test_fp8_kv_cache_scales_are_exported_and_named_in_the_config(tmp_path: Path, windows: torch.Tensor) -> None:
    source = default_model_dir()
    model = NLDTransformer.from_checkpoint(load_checkpoint(source, with_adapter=False), torch.float32)
    model = quantize_model(model, RECIPES["fp8"], windows, kv_cache="fp8", progress=False)
    out = export_quantized_hf(model, RECIPES["fp8"], source, tmp_path / "q", kv_cache="fp8")
    assert json.loads((out / "hf_quant_config.json").read_text())["quantization"]["kv_cache_quant_algo"] == "FP8"
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
        k_scale = handle.get_tensor("encoder.layers.0.self_attn.k_proj.k_scale")
    layers = model.config.num_hidden_layers
    assert (
        sum(n.endswith(".k_proj.k_scale") for n in names) == sum(n.endswith(".v_proj.v_scale") for n in names) == layers
    )
    assert k_scale.numel() == 1 and float(k_scale) > 0
    load_checkpoint(out)  # scales beside the weights do not disturb loading
