"""Random-weight checkpoints of a named shape, and the machine ceilings measured over a model's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nld.bench.shapes import SHAPES, machine_ceilings, random_checkpoint
from nld.checkpoint import load_checkpoint
from nld.generate import GenerationParams, generate, load_backend

SMALL = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
    "vocab_size": 512,
    "block_size": 4,
}


@pytest.fixture
def small_shape(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(SHAPES, "small", SMALL)
    return "small"


def test_the_issue_shape_has_133m_parameters() -> None:
    shape = SHAPES["133m"]
    hidden, layers, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    per_layer = hidden * (shape["num_attention_heads"] * shape["head_dim"]) * 2 + hidden * kv * 2
    per_layer += 3 * hidden * shape["intermediate_size"]
    total = layers * per_layer + 2 * vocab * hidden
    assert 125e6 < total < 140e6


def test_random_checkpoint_loads_with_its_shape_and_decodes(tmp_path: Path, small_shape: str) -> None:
    folder = random_checkpoint(tmp_path / "model", small_shape)
    checkpoint = load_checkpoint(folder, with_adapter=False)
    config = checkpoint.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (64, 2, 512)
    assert config.block_size == 4
    name = next(name for name in checkpoint.weights if "embed" in name)
    assert 0.015 < checkpoint.weights[name].float().std().item() < 0.025  # std 0.02, as written
    again = random_checkpoint(tmp_path / "again", small_shape)  # seeded: the same weights every time
    assert torch.equal(load_checkpoint(again, with_adapter=False).weights[name], checkpoint.weights[name])
    backend = load_backend(str(folder), compile=False)
    result = generate(backend, [1, 2, 3, 4], "ar", GenerationParams(max_new_tokens=6))
    assert len(result.new_ids) == 6 and all(0 <= token < 512 for token in result.new_ids)


def test_machine_ceilings_count_the_model_weights(tmp_path: Path, small_shape: str) -> None:
    folder = random_checkpoint(tmp_path / "model", small_shape)
    ceilings = machine_ceilings(str(folder), repeat=2)
    matrices = [t for name, t in load_checkpoint(folder).weights.items() if t.dim() == 2 and "embed" not in name]
    assert ceilings["weight_bytes_per_token"] == sum(t.numel() * 4 for t in matrices)
    assert ceilings["gemv_weight_stream_gb_s"] > 0 and ceilings["gemm_fp32_gflop_s"] > 0
    expected = ceilings["gemv_weight_stream_gb_s"] * 1e9 / ceilings["weight_bytes_per_token"]
    assert ceilings["ar_ceiling_tok_s"] == pytest.approx(expected, rel=0.05)
