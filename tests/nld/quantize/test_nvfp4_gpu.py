"""NVFP4 on a CUDA machine (ModelOpt's NVFP4 calibration kernels are CUDA-only; on a CPU-only machine
the recipe is refused before any work, which test_export_hf.py checks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from nld.checkpoint import load_checkpoint
from nld.model import NLDTransformer
from nld.models import default_model_dir
from nld.quantize.calibration import calibration_windows, read_texts
from nld.quantize.checkpoint import quantize_checkpoint
from nld.quantize.ptq import quantize_model
from nld.quantize.recipes import RECIPES
from nld.quantize.report import token_agreement
from nld.tokenizer import NLDTokenizer

pytestmark = pytest.mark.gpu


def test_nvfp4_checkpoint_is_written_in_modelopt_layout(tmp_path: Path) -> None:
    out = quantize_checkpoint(default_model_dir(), "nvfp4", tmp_path / "q", samples=4, seq_len=64, device="cuda")
    quantization = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert (quantization["quant_algo"], quantization["group_size"]) == ("NVFP4", 16)
    name = "encoder.layers.0.mlp.down_proj"
    with safe_open(str(out / "model.safetensors"), framework="pt") as handle:
        weight, scale = handle.get_tensor(f"{name}.weight"), handle.get_tensor(f"{name}.weight_scale")
        assert weight.dtype == torch.uint8 and weight.shape == (256, 768 // 2)
        assert scale.dtype == torch.float8_e4m3fn and scale.shape == (256, 768 // 16)
        assert handle.get_tensor(f"{name}.weight_scale_2").numel() == 1
        assert handle.get_tensor(f"{name}.input_scale").numel() == 1


def test_nvfp4_fake_quant_model_decodes_close_to_the_original() -> None:
    source = default_model_dir()
    windows = calibration_windows(NLDTokenizer.from_dir(source), read_texts(None)[:20], 4, 64)
    checkpoint = load_checkpoint(source, with_adapter=False)
    reference = NLDTransformer.from_checkpoint(checkpoint, torch.float32, "cuda")
    quantized = quantize_model(
        NLDTransformer.from_checkpoint(checkpoint, torch.float32, "cuda"), RECIPES["nvfp4"], windows, progress=False
    )
    prompt = windows[1, :48].tolist()
    greedy = []
    for model in (reference, quantized):
        ids = list(prompt)
        with torch.no_grad():
            for _ in range(16):
                steps = len(ids)
                causal = torch.ones(steps, steps, dtype=torch.bool, device="cuda").tril()
                bias = torch.zeros(steps, steps, device="cuda").masked_fill(~causal, float("-inf"))
                positions = torch.arange(steps, device="cuda")[None]
                hidden, _ = model(torch.tensor([ids], device="cuda"), positions, bias[None, None])
                ids.append(int(model.logits(hidden[:, -1]).argmax()))
        greedy.append(ids[len(prompt) :])
    agreement = token_agreement([greedy[0]], [greedy[1]])
    assert agreement >= 0.25  # 4-bit weights and activations of a 6.8M-parameter model: close, not equal
