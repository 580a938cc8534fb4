"""Engine optimization profiles from the build plan: consistent shapes that cover every requested step."""

from __future__ import annotations

import json

import pytest

from nld.builder.plan import make_plan
from nld.builder.profiles import engine_profiles, trtexec_shape_flags
from nld.builder.skus import get_sku
from nld.config import NLDConfig, load_config, parse_config
from nld.errors import NLDError
from nld.models import default_model_dir
from tests.conftest import fixture_dir


def profiles(modes: tuple[str, ...], context: int | None = None, max_batch: int = 16):
    config = load_config(fixture_dir("tiny_b8"))
    plan = make_plan(config, get_sku("rtx-pro-6000"), "fp16", context)
    return config, plan, engine_profiles(config, plan.step_tokens, plan.context, max_batch, modes)


def test_decode_profile_covers_the_widest_requested_step_and_prefill_the_prompt() -> None:
    config, plan, (decode, prefill) = profiles(("ar", "linear-spec", "quadratic-spec"))
    widest = plan.step_tokens["quadratic-spec"]
    assert decode.shapes["input_ids"].max == (16, widest) and decode.shapes["input_ids"].min == (1, 1)
    assert decode.shapes["past_key_values.0.key"].max == (  # the past is committed tokens: AR reaches the end
        16,
        config.num_key_value_heads,
        plan.context - 1,
        config.head_dim,
    )
    assert prefill.shapes["input_ids"].max == (16, min(1024, plan.context))
    for profile in (decode, prefill):
        assert len(profile.shapes) == 3 + 2 * config.num_hidden_layers
        for pick in ("min", "opt", "max"):
            batch, steps = getattr(profile.shapes["input_ids"], pick)
            past = getattr(profile.shapes["past_key_values.1.value"], pick)[2]
            assert getattr(profile.shapes["attention_bias"], pick) == (batch, 1, steps, past + steps)
        for name, shapes in profile.shapes.items():
            assert all(lo <= opt <= hi for lo, opt, hi in zip(shapes.min, shapes.opt, shapes.max, strict=True)), name
    assert prefill.shapes["past_key_values.0.key"].max[2] + prefill.shapes["input_ids"].max[1] <= plan.context


def short_context_config(context: int = 128, block: int = 16) -> NLDConfig:
    data = json.loads((default_model_dir() / "config.json").read_text())
    return parse_config({**data, "max_position_embeddings": context, "block_size": block})


def test_quadratic_steps_are_sized_by_width_for_tokens_and_by_span_for_the_past() -> None:
    """A 128-token context takes B = 16 quadratic steps: 272 tokens that span 32 positions."""
    config = short_context_config()
    plan = make_plan(config, get_sku("rtx-pro-6000"), "fp16")
    assert plan.step_tokens["quadratic-spec"] == 272 and plan.step_positions["quadratic-spec"] == 32
    decode, prefill = engine_profiles(config, plan.step_tokens, 128, 4, ("quadratic-spec",), 1024, plan.step_positions)
    assert decode.shapes["input_ids"].max == (4, 272)
    assert decode.shapes["past_key_values.0.key"].max[2] == 128 - 32  # the last step ends at position 127
    assert decode.shapes["attention_bias"].max == (4, 1, 272, 96 + 272)  # its bias covers all step tokens
    assert prefill.shapes["input_ids"].max == (4, 128) and prefill.shapes["past_key_values.0.key"].max[2] == 0
    everything = engine_profiles(config, plan.step_tokens, 128, 4, tuple(plan.step_tokens))[0]
    assert everything.shapes["past_key_values.0.key"].max[2] == 127 and everything.shapes["input_ids"].max[1] == 272
    with pytest.raises(
        NLDError, match="quadratic-spec step of 272 tokens spans 32 positions and does not fit a context of 32"
    ):
        engine_profiles(config, plan.step_tokens, 32, 4, ("ar", "quadratic-spec"))


def test_ar_only_decode_profile_is_one_token_wide() -> None:
    _, _, (decode, _) = profiles(("ar",))
    assert decode.shapes["position_ids"].max[1] == 1


def test_bad_modes_and_contexts_are_refused() -> None:
    with pytest.raises(NLDError, match="unknown modes"):
        profiles(("ar", "beam"))
    with pytest.raises(NLDError, match="does not fit a context of 16 tokens"):
        profiles(("quadratic-spec",), context=16)


def test_trtexec_flags_repeat_one_set_per_profile() -> None:
    _, _, found = profiles(("ar",))
    flags = trtexec_shape_flags(found)
    assert flags.count("--minShapes=") == flags.count("--optShapes=") == flags.count("--maxShapes=") == 2
    assert "input_ids:16x1" in flags and "attention_bias:1x1x1x1" in flags
