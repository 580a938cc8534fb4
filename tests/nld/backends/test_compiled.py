"""Compiled static-shape steps (nld/backends/compiled.py): the same tokens as the eager steps, buckets
compiled once, an engine's whole run without a recompile, and the --compile switch where it applies.
(The golden fixtures run through the compiled backend too: kind `torch-compiled` in tests/conftest.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from nld.backends.compiled import COMPILE_BY_DEFAULT, decode_widths, resolve_compile, row_bucket
from nld.cli import main
from nld.engine import Engine, EngineSettings
from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams
from nld.serving.repository import RepositorySettings, compile_setting
from tests.conftest import fixture_dir
from tests.nld.engine.test_scheduler import Collector, prompts
from tests.nld.helpers import backend_for

CASE = "tiny_b8_spec_lora"


def test_buckets_and_defaults() -> None:
    assert decode_widths(8, 8) == (1, 8, 72) and decode_widths(32, 16) == (1, 32, 272)
    assert [row_bucket(n) for n in (1, 2, 3, 5, 9)] == [1, 2, 4, 8, 16]
    assert row_bucket(5, 6) == 6 and row_bucket(7, 6) == 7  # never past a store's slots, never below the rows
    assert resolve_compile(True, "cpu") and not resolve_compile(False, "cuda")
    assert resolve_compile(None, "cpu") is COMPILE_BY_DEFAULT["cpu"]
    assert [compile_setting(flag) for flag in (True, False, None)] == ["on", "off", "auto"]


def test_compile_is_refused_where_it_does_not_apply(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="--compile applies to the torch backend"):
        load_backend(str(fixture_dir(CASE)), "onnxruntime", compile=True)
    with pytest.raises(Exception, match="--compile applies to the torch backend"):
        RepositorySettings(str(fixture_dir(CASE)), backend="onnxruntime", compile="on").check()
    assert main(["generate", "--backend", "onnxruntime", "--compile", "--prompt", "x"]) == 2
    assert "--compile applies to the torch backend" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_greedy_tokens_equal_the_eager_steps(mode: str) -> None:
    eager, compiled = backend_for(CASE), backend_for(CASE, kind="torch-compiled")
    params = GenerationParams(max_new_tokens=40)
    for prompt in prompts(3, compiled.config.vocab_size):
        assert generate(compiled, prompt, mode, params).new_ids == generate(eager, prompt, mode, params).new_ids
    assert compiled.compiled is not None and compiled.compiled.records  # compiled, not run eagerly


@pytest.mark.slow
def test_an_engine_warmed_up_runs_mixed_modes_without_compiling_again() -> None:
    eager, compiled = backend_for(CASE), backend_for(CASE, kind="torch-compiled")
    engine = Engine(compiled, EngineSettings(max_batch=4, kv_blocks=64))
    engine.warm_up()
    assert compiled.compiled is not None
    seen = len(compiled.compiled.records)
    compiles = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    params = GenerationParams(max_new_tokens=24)
    collector = Collector()
    jobs = [(p, mode) for p, mode in zip(prompts(8, compiled.config.vocab_size), list(MODES) * 2, strict=True)]
    ids = [engine.submit(p, mode, params, collector.listen) for p, mode in jobs]
    while engine.busy:
        engine.step()
    for request_id, (prompt, mode) in zip(ids, jobs, strict=True):
        final = collector.final(request_id)
        assert final.error is None and final.generation is not None
        assert final.generation.new_ids == generate(eager, prompt, mode, params).new_ids, mode
    assert len(compiled.compiled.records) == seen  # every bucket it met was compiled by warm_up
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiles  # and nothing recompiled


@pytest.mark.slow
def test_cli_reports_the_compile_time(capsys: pytest.CaptureFixture[str]) -> None:
    model = str(default_model_dir())
    assert main(["generate", "--model", model, "--compile", "--mode", "ar", "--prompt", "def f(", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert 0 < record["compile_seconds"] <= record["seconds"]
