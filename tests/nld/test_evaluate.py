"""nld eval's per-mode report: the repetition measure read next to acceptance."""

from __future__ import annotations

import pytest

from nld.evaluate import evaluate_modes, markdown_table, repeated_ngram_share
from nld.generate import load_backend
from nld.models import BUILTIN_MODEL


def test_repeated_ngram_share_counts_generated_tokens_completing_a_seen_4gram() -> None:
    assert repeated_ngram_share([1, 2, 3, 4], [5, 6, 7, 8]) == 0.0
    # 1 2 3 4 1 2 3 4: the output's 4-grams (2 3 4 1), (3 4 1 2), (4 1 2 3) are new, (1 2 3 4) repeats.
    assert repeated_ngram_share([1, 2, 3, 4], [1, 2, 3, 4]) == 0.25
    # A loop inside the output counts too; the prompt's own repeats do not.
    # 9 9 9 9 9 | 7 7 7 7 7 7: (9 9 9 7) (9 9 7 7) (9 7 7 7) (7 7 7 7) are new, then (7 7 7 7) twice.
    assert repeated_ngram_share([9, 9, 9, 9, 9], [7, 7, 7, 7, 7, 7]) == pytest.approx(2 / 6)
    assert repeated_ngram_share([1, 2], []) == 0.0


@pytest.mark.skipif(not (BUILTIN_MODEL / "config.json").exists(), reason="built-in model not trained")
def test_modes_that_equal_ar_report_the_same_repetition() -> None:
    backend = load_backend(str(BUILTIN_MODEL))
    prompts = [[1, 40, 41, 42, 43, 44, 45, 46], [1, 50, 51, 52, 53, 54, 55, 56]]
    reports = {(r.mode, r.adapter): r for r in evaluate_modes(backend, prompts, max_new_tokens=16)}
    ar = reports[("ar", False)]
    assert 0.0 <= ar.repeated_4grams <= 1.0
    for report in reports.values():
        if report.equals_ar == report.prompts:
            assert report.repeated_4grams == ar.repeated_4grams, report.mode
    assert "repeated 4-grams" in markdown_table(list(reports.values()), 40.0)


@pytest.mark.skipif(not (BUILTIN_MODEL / "config.json").exists(), reason="built-in model not trained")
def test_quadratic_spec_is_evaluated_at_the_released_block_on_every_device() -> None:
    """`nld eval` reads the model's quality the same on a CPU (whose quadratic-spec default is B=2) as on
    a GPU: quadratic-spec runs at min(16, block size) unless --block-length says otherwise."""
    from nld.generate import generate
    from nld.modes import GenerationParams

    backend = load_backend(str(BUILTIN_MODEL))
    prompt = [1, 482, 796, 11, 68, 15, 314, 308]
    (report,) = [r for r in evaluate_modes(backend, [prompt], max_new_tokens=24) if r.mode == "quadratic-spec"]
    block = min(16, backend.config.block_size)
    expected = generate(backend, prompt, "quadratic-spec", GenerationParams(max_new_tokens=24, block_length=block))
    assert (report.new_tokens, report.forwards) == (len(expected.new_ids), expected.forwards)
    (two,) = [r for r in evaluate_modes(backend, [prompt], 24, block_length=2) if r.mode == "quadratic-spec"]
    assert two.forwards != report.forwards
