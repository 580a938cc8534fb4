"""Calibration data and the two-mode calibration forwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nld.config import load_config
from nld.corpus import stdlib_corpus
from nld.errors import NLDError
from nld.models import default_model_dir
from nld.quantize.calibration import calibration_windows, read_texts, two_mode_inputs
from nld.tokenizer import NLDTokenizer


def test_jsonl_and_text_files_and_their_errors(tmp_path: Path) -> None:
    good = tmp_path / "calib.jsonl"
    good.write_text(json.dumps({"text": "def f():\n    return 1\n"}) + "\n\n" + json.dumps({"text": "x = 2"}) + "\n")
    assert read_texts(good) == ["def f():\n    return 1\n", "x = 2"]
    plain = tmp_path / "calib.txt"
    plain.write_text("import os\n")
    assert read_texts(plain) == ["import os\n"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no text"}) + "\n")
    with pytest.raises(NLDError, match=r'bad\.jsonl, line 2: needs a string field "text"'):
        read_texts(bad)
    bad.write_text("{not json\n")
    with pytest.raises(NLDError, match=r"bad\.jsonl, line 1: not JSON"):
        read_texts(bad)
    with pytest.raises(NLDError, match=r"calibration file .*missing\.txt not found"):
        read_texts(tmp_path / "missing.txt")


def test_builtin_calibration_set_is_the_training_split() -> None:
    corpus = stdlib_corpus()
    texts = read_texts(None)
    assert len(texts) == len(corpus.train)


def test_windows_are_seeded_and_sized() -> None:
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    texts = ["def add(a, b):\n    return a + b\n" * 40]
    first = calibration_windows(tokenizer, texts, 6, 32, seed=3)
    assert first.shape == (6, 32) and torch.equal(first, calibration_windows(tokenizer, texts, 6, 32, seed=3))
    with pytest.raises(NLDError, match="one window needs 100000"):
        calibration_windows(tokenizer, texts, 1, 100000)


def test_each_forward_covers_a_causal_prefix_and_a_diffusion_draft_block() -> None:
    config = load_config(default_model_dir())
    block = config.block_size
    windows = torch.arange(10, 10 + 2 * 40).reshape(2, 40)
    ids, bias = two_mode_inputs(windows, config)
    start = 40 - block
    assert torch.equal(ids[:, : start + 1], windows[:, : start + 1])  # prefix and the block's seed are real
    assert (ids[:, start + 1 :] == config.mask_token_id).all()  # then B-1 masks
    visible = bias[0, 0] == 0
    assert torch.equal(visible[:start, :start], torch.ones(start, start, dtype=torch.bool).tril())  # causal prefix
    assert not visible[:start, start:].any()
    assert visible[start:, :].all()  # the block sees the prefix and itself, both ways
    with pytest.raises(NLDError, match="leave no causal prefix"):
        two_mode_inputs(windows[:, :block], config)
