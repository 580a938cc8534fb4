"""Recipes as data: refusals before work (host, dims, version), and the ModelOpt configs they produce."""

from __future__ import annotations

import dataclasses
import importlib.metadata

import pytest

import nld.quantize.recipes as recipes
from nld.config import load_config
from nld.errors import NLDError
from nld.models import default_model_dir
from nld.quantize.recipes import RECIPES, check_modelopt, check_recipe, get_recipe, modelopt_config
from tests.conftest import fixture_dir


def test_nvfp4_on_a_cpu_host_fails_fast_with_the_reason() -> None:
    with pytest.raises(NLDError, match="nvfp4 calibration needs a CUDA GPU"):
        check_recipe(RECIPES["nvfp4"], load_config(default_model_dir()), "cpu")


def test_int4_refuses_in_features_that_do_not_fill_its_blocks_naming_the_layer() -> None:
    config = load_config(default_model_dir())
    check_recipe(RECIPES["int4-awq"], config, "cpu")  # 256 / 768: the built-in model's dims allow it
    odd = dataclasses.replace(config, intermediate_size=1000)
    with pytest.raises(NLDError, match=r"encoder\.layers\.0\.mlp\.down_proj has 1000"):
        check_recipe(RECIPES["int4-awq"], odd, "cpu")
    with pytest.raises(NLDError, match="q_proj has 64"):
        check_recipe(RECIPES["int4-awq"], load_config(fixture_dir("tiny_b8")), "cpu")  # hidden 64
    check_recipe(RECIPES["fp8"], odd, "cpu")  # per-tensor fp8 has no such constraint


def test_unknown_precision_and_kv_cache_are_refused() -> None:
    with pytest.raises(NLDError, match="unknown quantization precision 'int3'"):
        get_recipe("int3")
    with pytest.raises(NLDError, match="unknown KV-cache quantization 'int4'"):
        modelopt_config(RECIPES["fp8"], kv_cache="int4")


def test_configs_keep_head_and_embeddings_16_bit_and_add_kv_quantizers() -> None:
    config = modelopt_config(RECIPES["int4-awq"])
    disabled = {e["quantizer_name"] for e in config["quant_cfg"] if e.get("enable") is False}
    assert {"*diffusion_head*", "*embed_tokens*"} <= disabled
    weight = next(e for e in config["quant_cfg"] if e["quantizer_name"] == "*weight_quantizer")
    assert weight["cfg"]["num_bits"] == 4 and weight["cfg"]["block_sizes"][-1] == RECIPES["int4-awq"].group_size
    with_kv = modelopt_config(RECIPES["fp8"], kv_cache="fp8")
    kv = [e for e in with_kv["quant_cfg"] if e["quantizer_name"] == recipes.KV_CACHE_QUANTIZERS]
    assert len(kv) == 1 and tuple(kv[0]["cfg"]["num_bits"]) == (4, 3)
    assert modelopt_config(RECIPES["fp8"]) != with_kv  # the base config is copied, never mutated


def test_modelopt_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    check_modelopt()  # the tested version is what setup installs
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "9.9.9")
    with pytest.raises(NLDError, match=r"nvidia-modelopt 9\.9\.9 is installed; the recipes are pinned to 0\.47\.0"):
        check_modelopt()
