"""ModelOpt PTQ of the built-in model on CPU: which layers get quantizers, calibration in both attention
modes, and the quantized model decoding through the step seam."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from nld.backends import TorchBackend
from nld.checkpoint import load_checkpoint
from nld.cli import main
from nld.generate import generate
from nld.model import NLDTransformer
from nld.models import default_model_dir
from nld.modes import GenerationParams
from nld.quantize import calibration
from nld.quantize.calibration import calibration_windows, read_texts
from nld.quantize.ptq import quantize_model
from nld.quantize.recipes import RECIPES
from nld.quantize.report import common_prefix, token_agreement
from nld.tokenizer import NLDTokenizer


@pytest.fixture(scope="module")
def reference() -> NLDTransformer:
    return NLDTransformer.from_checkpoint(load_checkpoint(default_model_dir(), with_adapter=False), torch.float32)


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    return calibration_windows(tokenizer, read_texts(None)[:20], 4, 64)


def input_amax(model: NLDTransformer) -> dict[str, float]:
    return {
        name: float(module.input_quantizer.amax.max())
        for name, module in model.named_modules()
        if hasattr(module, "input_quantizer") and module.input_quantizer.is_enabled
    }


@pytest.mark.parametrize("precision", ["fp8", "int4-awq"])
def test_decoder_linears_are_quantized_head_and_embeddings_are_not(
    reference: NLDTransformer, windows: torch.Tensor, precision: str
) -> None:
    model = quantize_model(copy.deepcopy(reference), RECIPES[precision], windows, progress=False)
    quantized = {
        name
        for name, m in model.named_modules()
        if getattr(m, "weight_quantizer", None) is not None and m.weight_quantizer.is_enabled
    }
    assert len(quantized) == 7 * model.config.num_hidden_layers
    assert "diffusion_head" not in quantized and not any("embed" in name for name in quantized)
    prompt = windows[0, :32].tolist()
    result = generate(TorchBackend(model), prompt, "linear-spec", GenerationParams(max_new_tokens=16))
    ar = generate(TorchBackend(model), prompt, "ar", GenerationParams(max_new_tokens=16))
    assert result.new_ids == ar.new_ids  # self-speculation stays exact on the quantized network


def test_fp8_activation_ranges_include_the_diffusion_block(
    reference: NLDTransformer, windows: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = input_amax(quantize_model(copy.deepcopy(reference), RECIPES["fp8"], windows, progress=False))

    def causal_only(windows: torch.Tensor, config: object) -> tuple[torch.Tensor, torch.Tensor]:
        length = windows.shape[1]
        causal = torch.zeros(length, length).masked_fill(
            ~torch.ones(length, length, dtype=torch.bool).tril(), -torch.inf
        )
        return windows, causal[None, None]

    monkeypatch.setattr(calibration, "two_mode_inputs", causal_only)
    causal = input_amax(quantize_model(copy.deepcopy(reference), RECIPES["fp8"], windows, progress=False))
    assert both.keys() == causal.keys()
    # The mask tokens and bidirectional mixing reach activations the causal text alone never does.
    assert sum(both[name] > causal[name] * 1.01 for name in both) >= len(both) // 4


def test_token_agreement_counts_positions_and_common_prefixes() -> None:
    assert token_agreement([[1, 2, 3, 4], [5, 6]], [[1, 9, 3], [5, 6]]) == pytest.approx(4 / 6)
    assert common_prefix([[1, 2, 3, 4], [5, 6], [7]], [[1, 9, 3], [5, 6], [8]]) == pytest.approx((1 + 2 + 0) / 3)


@pytest.mark.slow
def test_quant_report_cli_writes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    argv = ["quant-report", "--precision", "int4-awq", "--samples", "4", "--prompts", "2", "--max-new-tokens", "8"]
    assert main([*argv, "--perplexity-windows", "2", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| quadratic-spec | - |" in table and "Held-out perplexity" in table
    assert table.startswith("int4-awq vs unquantized:"), table[:300]  # nothing of ModelOpt's before it
    report = json.loads(out.read_text())
    assert report["recipe"]["quant_algo"] == "W4A16_AWQ" and report["modelopt"] == "0.47.0"
    modes = {(m["mode"], m["adapter"]) for m in report["modes"]}
    assert ("linear-spec", True) in modes and ("linear-spec", False) in modes
    assert all(0 <= m["token_agreement"] <= 1 for m in report["modes"])
