"""scripts/bench_fairness.py's library: every worst case is valid and measured beside a running expensive
user (a smoke run on a fixture model; the figures themselves are a benchmark, docs/serving.md)."""

from __future__ import annotations

from dataclasses import replace

from nld.bench.fairness import Load, markdown, measure, worst_cases
from nld.limits import check_request
from nld.modes import GenerationParams
from tests.nld.helpers import backend_for


def test_worst_cases_are_valid_requests() -> None:
    config = replace(backend_for("tiny_b8").config, max_position_embeddings=1024)
    for load in worst_cases(1024):
        params = GenerationParams(max_new_tokens=load.max_new_tokens, block_length=load.block_length)
        check_request(config, load.mode, load.prompt_tokens, params)  # raises if any is out of bounds


def test_measure_reports_each_load_with_the_expensive_user_running() -> None:
    loads = [Load("wide quadratic", "quadratic-spec", 8, 64, 8)]
    rows = measure(backend_for("tiny_b8"), loads, repeats=1)
    assert [row.expensive for row in rows] == ["wide quadratic"]
    row = rows[0]
    assert row.solo_seconds > 0 and row.beside_seconds > 0 and row.factor == row.beside_seconds / row.solo_seconds
    assert row.expensive_requests >= 1 and row.expensive_tokens > 0
    assert "wide quadratic" in markdown(rows)
