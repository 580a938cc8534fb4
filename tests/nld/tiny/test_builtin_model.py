"""The built-in tiny model: shipped with the package, default for --model, and self-speculation pays."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from nld.checkpoint import load_checkpoint
from nld.evaluate import eval_token_stream, evaluate_modes, sample_prompts
from nld.generate import load_backend
from nld.models import BUILTIN_MODEL
from nld.tokenizer import NLDTokenizer

pytestmark = pytest.mark.skipif(not (BUILTIN_MODEL / "config.json").exists(), reason="built-in model not trained")


def test_builtin_model_layout() -> None:
    checkpoint = load_checkpoint(BUILTIN_MODEL)
    config = checkpoint.config
    assert config.hidden_size % 128 == 0 and config.intermediate_size % 128 == 0
    assert config.num_attention_heads % 4 == 0 and config.num_key_value_heads % 4 == 0
    size = sum(p.stat().st_size for p in BUILTIN_MODEL.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    assert (BUILTIN_MODEL / "tokenizer.json").exists() and (BUILTIN_MODEL / "training.json").exists()


def test_generate_without_model_argument_prints_python() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "nld.cli",
            "generate",
            "--prompt",
            "def fibonacci(n):",
            "--mode",
            "linear-spec",
            "--max-new-tokens",
            "48",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    text = json.loads(run.stdout)["text"]
    assert any(keyword in text for keyword in ("return", "if ", "for ", "self", "(")), text


@pytest.fixture(scope="module")
def held_out_reports() -> dict:
    backend = load_backend(str(BUILTIN_MODEL))
    tokenizer = NLDTokenizer.from_dir(BUILTIN_MODEL)
    assert tokenizer is not None
    stream = eval_token_stream(tokenizer)
    prompts = sample_prompts(stream, 32, 64)  # `nld eval`'s defaults: the prompts of docs/tiny_model.md
    return {(r.mode, r.adapter): r for r in evaluate_modes(backend, prompts, max_new_tokens=64)}


@pytest.mark.slow
def test_self_speculation_equals_ar_on_held_out_prompts(held_out_reports: dict) -> None:
    for (mode, _), report in held_out_reports.items():
        if mode in ("linear-spec", "quadratic-spec"):
            assert report.equals_ar == report.prompts, mode


@pytest.mark.slow
def test_linear_spec_acceptance_target_on_held_out_prompts(held_out_reports: dict) -> None:
    adapter = load_checkpoint(BUILTIN_MODEL).adapter is not None
    assert held_out_reports[("linear-spec", adapter)].mean_acceptance_length >= 2.5


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 3 target quadratic TPF >= 2.0 not reached yet: docs/tiny_model.md")
def test_quadratic_spec_tokens_per_forward_target_on_held_out_prompts(held_out_reports: dict) -> None:
    assert held_out_reports[("quadratic-spec", False)].tokens_per_forward >= 2.0


@pytest.mark.slow
def test_eval_command_writes_table_and_json(tmp_path) -> None:
    out = tmp_path / "eval.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "nld.cli",
            "eval",
            "--prompts",
            "2",
            "--max-new-tokens",
            "8",
            "--perplexity-windows",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "| quadratic-spec |" in run.stdout and "held-out AR perplexity" in run.stdout
    record = json.loads(out.read_text())
    assert {m["mode"] for m in record["modes"]} == {"ar", "diffusion", "linear-spec", "quadratic-spec"}
    assert record["held_out_perplexity"] > 1
