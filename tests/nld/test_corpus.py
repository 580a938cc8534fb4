"""The stdlib corpus (nld/corpus.py) that evaluation, calibration and the tiny model's training share."""

from __future__ import annotations

from nld.corpus import evaluation_files, is_held_out, stdlib_corpus


def test_held_out_split_is_disjoint_and_stable() -> None:
    corpus = stdlib_corpus()
    assert corpus.held_out and corpus.train
    assert not set(corpus.held_out) & set(corpus.train)
    assert all(is_held_out(str(p.relative_to(corpus.root))) for p in corpus.held_out)


def test_evaluation_files_are_held_out_and_skip_codec_tables() -> None:
    corpus = stdlib_corpus()
    files = evaluation_files(corpus)
    assert files and set(files) <= set(corpus.held_out)
    assert not any("encodings" in p.relative_to(corpus.root).parts for p in files)
