"""TRT-LLM checkpoint export: naming, sharding, and an independent forward over the shards that
reproduces the released code's causal logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from nld.config import load_config
from nld.convert.trtllm import check_tp, export_trtllm
from nld.convert.trtllm_check import causal_logits
from nld.errors import NLDError
from tests.conftest import fixture_dir
from tests.nld.helpers import expected_outputs, expected_path


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_sharded_export_reproduces_reference_logits(tmp_path: Path, tp: int) -> None:
    out = export_trtllm(fixture_dir("tiny_b8"), tmp_path / "trtllm", tp=tp, dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert config["mapping"]["tp_size"] == tp and config["rotary_scaling"]["type"] == "yarn"
    assert sorted(p.name for p in out.iterdir()) == ["config.json"] + [f"rank{r}.safetensors" for r in range(tp)]
    rank0 = load_file(out / "rank0.safetensors")
    heads, kv, head_dim, hidden = 4, 2, 16, 64
    kv_per_rank = max(1, kv // tp)
    assert rank0["transformer.layers.0.attention.qkv.weight"].shape == (
        (heads // tp + 2 * kv_per_rank) * head_dim,
        hidden,
    )
    assert rank0["transformer.layers.0.mlp.fc.weight"].shape == (128 // tp, hidden)
    for index, case in enumerate(expected_outputs("tiny_b8")["prompts"]):
        expected = np.load(expected_path("tiny_b8", f"logits_p{index}_ar.npy"))
        np.testing.assert_allclose(causal_logits(out, case["prompt_ids"]), expected, atol=1e-4, rtol=0)


def test_mlp_follows_trtllm_gate_up_convention(tmp_path: Path) -> None:
    from safetensors.numpy import load_file as load_ours

    out = export_trtllm(fixture_dir("tiny_b8"), tmp_path / "trtllm", tp=1, dtype="float32")
    ours = load_ours(fixture_dir("tiny_b8") / "model.safetensors")
    rank0 = load_file(out / "rank0.safetensors")
    layer = "transformer.layers.1."
    np.testing.assert_array_equal(rank0[layer + "mlp.fc.weight"], ours["encoder.layers.1.mlp.gate_proj.weight"])
    np.testing.assert_array_equal(rank0[layer + "mlp.gate.weight"], ours["encoder.layers.1.mlp.up_proj.weight"])
    np.testing.assert_array_equal(rank0["lm_head.weight"], ours["diffusion_head.weight"])


def test_bad_tp_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    config = load_config(fixture_dir("tiny_b8"))
    with pytest.raises(NLDError, match="tp 8 does not divide num_attention_heads 4"):
        check_tp(config, 8)
    with pytest.raises(NLDError, match="tp must be one of"):
        export_trtllm(fixture_dir("tiny_b8"), tmp_path / "out", tp=3)
    assert not list(tmp_path.iterdir())
