"""The training script end to end in miniature: every phase runs, resumes, and writes a loadable checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nld.checkpoint import load_checkpoint
from nld.generate import generate, load_backend
from nld.tiny.draft_adapter import DraftAdapterSettings
from nld.tiny.train import TrainSettings, check_resumable, train
from nld.tokenizer import NLDTokenizer

QUICK = dataclasses.replace(
    TrainSettings(),
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=256,
    vocab_size=512,
    seq_len=64,
    batch_size=4,
    ar_steps=3,
    nld_steps=3,
    chain_steps=3,
    chain_greedy_tokens=32,
    warmup_steps=1,
    adapter=DraftAdapterSettings(rank=4, chunks=2, chunk_rows=8, context=16, check_prompts=2, check_tokens=8),
)


@pytest.mark.slow
def test_quick_training_writes_a_working_checkpoint(tmp_path: Path) -> None:
    logs: list[str] = []
    output = train(tmp_path / "model", tmp_path / "work", QUICK, logs.append)
    assert (tmp_path / "work" / "state.pt").exists()
    checkpoint = load_checkpoint(output)
    assert checkpoint.config.hidden_size == 128 and checkpoint.config.block_size == 8
    report = json.loads((output / "training.json").read_text())
    assert report["final"]["step"] == 9 and report["final"]["phase"] == "chain" and report["settings"]["seed"] == 0
    tokenizer = NLDTokenizer.from_dir(output)
    assert tokenizer is not None
    prompt = tokenizer.encode_prompt("def f(x):")
    assert len(generate(load_backend(str(output)), prompt, "ar").new_ids) == 128
    # Rerunning resumes from the saved state instead of starting over.
    logs.clear()
    train(tmp_path / "model", tmp_path / "work", QUICK, logs.append)
    assert any("resuming at step 9" in line for line in logs)
    assert not list(tmp_path.glob(".model.*"))  # no half-written staging folder left behind


@pytest.mark.slow
def test_start_from_a_phase_end_matches_a_run_from_scratch(tmp_path: Path) -> None:
    # Only chain settings differ, so the NLD phase's end of one run is where the other passes too.
    other_chain = dataclasses.replace(QUICK, chain_diffusion_weight=3.0, chain_seed=5)
    train(tmp_path / "base", tmp_path / "base-work", QUICK, lambda _: None)
    snapshot = tmp_path / "base-work" / "after-nld.pt"
    assert torch.load(snapshot, weights_only=False)["step"] == 6
    logs: list[str] = []
    started = train(tmp_path / "started", tmp_path / "started-work", other_chain, logs.append, start_from=snapshot)
    assert any("starting from" in line for line in logs) and any("resuming at step 6" in line for line in logs)
    scratch = train(tmp_path / "scratch", tmp_path / "scratch-work", other_chain, lambda _: None)
    started_weights, scratch_weights = load_checkpoint(started).weights, load_checkpoint(scratch).weights
    assert started_weights.keys() == scratch_weights.keys()
    assert all(torch.equal(started_weights[name], scratch_weights[name]) for name in started_weights)
    # The chain seed reseeds the chain phase's draws: without it the same run ends elsewhere.
    unseeded = train(tmp_path / "unseeded", tmp_path / "unseeded-work", dataclasses.replace(other_chain, chain_seed=-1))
    unseeded_weights = load_checkpoint(unseeded).weights
    assert not all(torch.equal(started_weights[name], unseeded_weights[name]) for name in started_weights)
    # An AR-phase setting differs: the snapshot is not on this run's path.
    with pytest.raises(ValueError, match=r"other values of lr"):
        train(tmp_path / "x", tmp_path / "x-work", dataclasses.replace(other_chain, lr=1e-3), start_from=snapshot)
    assert not (tmp_path / "x-work" / "state.pt").exists()


def test_check_resumable_frees_only_chain_settings_and_only_before_the_chain_phase() -> None:
    saved = dataclasses.asdict(QUICK)
    chain_start = QUICK.ar_steps + QUICK.nld_steps
    other_chain = dataclasses.replace(QUICK, chain_lr=1e-4, chain_steps=5)
    check_resumable(saved, other_chain, chain_start, Path("after-nld.pt"))  # the chain phase has not started
    with pytest.raises(ValueError, match=r"other values of chain_lr, chain_steps"):
        check_resumable(saved, other_chain, chain_start + 1, Path("state.pt"))
    with pytest.raises(ValueError, match=r"other values of nld_steps"):
        check_resumable(saved, dataclasses.replace(QUICK, nld_steps=4), QUICK.ar_steps, Path("after-ar.pt"))


def test_check_resumable_reads_a_field_missing_from_an_older_state_as_its_default() -> None:
    saved = {k: v for k, v in dataclasses.asdict(QUICK).items() if k not in ("device", "chain_max_tail_repeats")}
    step = QUICK.ar_steps + QUICK.nld_steps + QUICK.chain_steps
    check_resumable(saved, QUICK, step, Path("state.pt"))
    with pytest.raises(ValueError, match=r"other values of device"):
        check_resumable(saved, dataclasses.replace(QUICK, device="cuda"), step, Path("state.pt"))
