"""SKU registry and build plans: sizes checked against the real model and caches, refusals named."""

from __future__ import annotations

import pytest
import torch

from nld.builder.cli import main
from nld.builder.plan import PUBLISHED_TOKENS_PER_FORWARD, ParameterCounts, make_plan
from nld.builder.skus import PRECISIONS, SKUS, check_precision, get_sku
from nld.config import load_config, parse_config
from nld.errors import NLDError
from nld.model import NLDTransformer
from tests.conftest import fixture_dir
from tests.nld.helpers import RELEASED_8B, backend_for


def test_registry_matches_the_targets() -> None:
    assert set(SKUS) == {"gb200", "rtx-pro-6000", "dgx-spark", "cpu"}
    assert (SKUS["gb200"].cuda_arch, SKUS["gb200"].engine_builder) == ("sm_100a", "tensorrt")
    assert SKUS["rtx-pro-6000"].engine_builder == SKUS["dgx-spark"].engine_builder == "tensorrt-rtx"
    assert SKUS["dgx-spark"].host_arch == "aarch64" and SKUS["cpu"].engine_builder is None
    for sku in SKUS.values():
        assert set(sku.precisions) <= set(PRECISIONS)
    with pytest.raises(NLDError, match="target 'cpu' does not support precision 'nvfp4'"):
        check_precision(get_sku("cpu"), "nvfp4")
    with pytest.raises(NLDError, match="unknown target 'h100'"):
        get_sku("h100")


def test_parameter_count_and_kv_size_match_the_real_model() -> None:
    config = load_config(fixture_dir("tiny_b8"))
    counts = ParameterCounts.of(config)
    with torch.device("meta"):
        model = NLDTransformer(config)
    assert counts.linear + counts.other == sum(p.numel() for p in model.parameters())
    cache = backend_for("tiny_b8").new_cache(1)  # float32 cache: 4 bytes per element
    plan = make_plan(config, get_sku("rtx-pro-6000"), "bf16")
    assert plan.kv_bytes_per_token * 2 == (cache.keys.numel() + cache.values.numel()) * 4
    assert plan.weight_bytes == 2 * plan.parameters


def test_eight_b_plan_and_roofline() -> None:
    config = parse_config(RELEASED_8B)
    bf16 = make_plan(config, get_sku("gb200"), "bf16", context=4096)
    int4 = make_plan(config, get_sku("gb200"), "int4-awq", context=4096)
    assert 8.4e9 < bf16.parameters < 8.6e9
    assert int4.weight_bytes < 0.4 * bf16.weight_bytes and not int4.notes
    seconds = (bf16.weight_bytes + bf16.kv_bytes_per_token * 4096) / 8000e9
    assert bf16.roofline_tokens_per_second["ar"] == pytest.approx(1 / seconds)
    ratio = bf16.roofline_tokens_per_second["linear-spec"] / bf16.roofline_tokens_per_second["ar"]
    assert ratio == pytest.approx(PUBLISHED_TOKENS_PER_FORWARD["linear-spec"])
    assert bf16.step_tokens == {"ar": 1, "diffusion": 32, "linear-spec": 32, "quadratic-spec": 16 * 17}
    short = make_plan(config, get_sku("rtx-pro-6000"), "fp8", context=1024)
    long = make_plan(config, get_sku("rtx-pro-6000"), "fp8", context=32768)
    assert short.max_batch_at_context > long.max_batch_at_context >= 1
    tight = make_plan(config, get_sku("rtx-pro-6000"), "bf16", context=10**7)
    assert tight.max_batch_at_context == 0 and "does not fit" in tight.notes[0]


def test_int4_plan_notes_uneven_in_features() -> None:
    plan = make_plan(load_config(fixture_dir("tiny_b8")), get_sku("dgx-spark"), "int4-awq")
    assert any("divisible by its 128 block" in note for note in plan.notes)


def test_cli_lists_targets_and_refuses_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list-targets"]) == 0
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in SKUS)
    model = str(fixture_dir("tiny_b8"))
    assert main(["--model", model, "--target", "gb200", "--precision", "fp8", "--dry-run"]) == 0
    assert "roofline tokens/s" in capsys.readouterr().out
    cases = [
        (["--model", model, "--target", "cpu", "--precision", "nvfp4", "--dry-run"], "does not support"),
        (["--model", "/nonexistent", "--target", "gb200", "--precision", "fp8", "--dry-run"], "/nonexistent"),
        (["--model", model, "--target", "h100", "--precision", "fp8"], "unknown target"),
        (["--target", "gb200"], "--precision required"),  # --model defaults to the built-in model
        (["--model", model, "--target", "gb200", "--precision", "fp8"], "--output required"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err


def test_the_plan_follows_the_kv_cache_the_build_writes() -> None:
    """fp8 weights keep a 16-bit KV cache unless --kv-cache fp8 (the plan used to halve it always)."""
    config = parse_config(RELEASED_8B)
    fp8 = make_plan(config, get_sku("gb200"), "fp8", context=4096)
    fp8_kv = make_plan(config, get_sku("gb200"), "fp8", context=4096, kv_cache="fp8")
    bf16 = make_plan(config, get_sku("gb200"), "bf16", context=4096)
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token == 2 * fp8_kv.kv_bytes_per_token


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--precision", "fp16", "--kv-cache", "fp8"], "--kv-cache fp8 applies to the quantized precisions"),
        (["--precision", "bf16", "--tp", "16"], "tp must be one of (1, 2, 4, 8), got 16"),
    ],
)
def test_dry_run_refuses_options_it_would_ignore(
    capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    assert main(["--target", "gb200", *options, "--dry-run"]) == 2
    assert message in capsys.readouterr().err


def test_dry_run_into_a_closed_pipe_exits_quietly() -> None:
    """`nld-build --dry-run | head`: the reader is gone before the plan is written."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE, as after `head` exited
    command = [sys.executable, "-m", "nld.builder.cli", "--target", "gb200", "--precision", "fp8", "--dry-run"]
    try:
        build = subprocess.run(command, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert build.returncode == 0 and "Traceback" not in build.stderr, build.stderr
