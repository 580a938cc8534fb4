"""Config parsing: every NLD field, YaRN + Llama-4 RoPE, and errors that name the field."""

from __future__ import annotations

import json

import pytest
import torch

from nld.config import load_config, parse_config
from nld.errors import ConfigError
from nld.rope import inverse_frequencies
from tests.conftest import fixture_dir
from tests.nld.helpers import RELEASED_8B

transformers = pytest.importorskip("transformers")


def test_fixture_config_fields() -> None:
    config = load_config(fixture_dir("tiny_b8"))
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim, config.vocab_size) == (64, 2, 16, 512)
    assert (config.mask_token_id, config.eos_token_ids, config.block_size) == (100, (11,), 8)
    assert config.rope.rope_type == "yarn" and config.rope.factor == 16 and config.rope.llama_4_scaling_beta == 0.1


def test_eos_comes_from_generation_config() -> None:
    config = parse_config({**RELEASED_8B, "eos_token_id": 2}, {"eos_token_id": [11, 12]})
    assert config.eos_token_ids == (11, 12)
    assert parse_config({**RELEASED_8B, "eos_token_id": 2}).eos_token_ids == (2,)


def test_head_dim_is_read_not_derived() -> None:
    config = parse_config({**RELEASED_8B, "hidden_size": 5120, "num_hidden_layers": 40, "intermediate_size": 16384})
    assert config.head_dim == 128  # 5120 / 32 would be 160


@pytest.mark.parametrize("head_dim", [128, 16])
def test_yarn_frequencies_equal_transformers(head_dim: int) -> None:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    data = {**RELEASED_8B, "head_dim": head_dim}
    hf_config = transformers.Ministral3Config(**{k: v for k, v in data.items() if k != "model_type"})
    expected, expected_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_config, "cpu")
    actual, factor = inverse_frequencies(parse_config(data).rope, head_dim)
    torch.testing.assert_close(actual, expected, atol=0, rtol=1e-6)
    assert factor == pytest.approx(expected_factor)


def test_legacy_rope_scaling_is_read() -> None:
    data = {k: v for k, v in RELEASED_8B.items() if k != "rope_parameters"}
    data.update(rope_theta=1e6, rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096})
    rope = parse_config(data).rope
    assert (rope.rope_type, rope.theta, rope.factor) == ("yarn", 1e6, 4.0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"num_key_value_heads": 5}, "'num_key_value_heads'"),
        ({"dlm_paradigm": "causal"}, "'dlm_paradigm'"),
        ({"block_size": 0}, "'block_size'"),
        ({"rms_norm_eps": -1}, "'rms_norm_eps'"),
        ({"hidden_act": "gelu"}, "'hidden_act'"),
        ({"tie_word_embeddings": "no"}, "'tie_word_embeddings'"),
        ({"rope_parameters": {"rope_type": "ntk", "rope_theta": 1e6}}, "'rope_type'"),
        (
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 16}},
            "'original_max_position_embeddings'",
        ),
    ],
)
def test_invalid_fields_are_named(change: dict, field: str, tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**RELEASED_8B, **change}))
    with pytest.raises(ConfigError) as error:
        load_config(tmp_path)
    assert field in str(error.value) and "config.json" in str(error.value)
