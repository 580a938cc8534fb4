"""The chain phase's batch loss: the real-window AR guard adds exactly its weighted next-token loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from nld.step import additive_bias, causal
from nld.tiny.recipe import NoiseSchedule, doubled_sequence_visibility
from nld.tiny.train import TrainSettings, ar_loss, chain_loss, new_model

SETTINGS = dataclasses.replace(
    TrainSettings(),
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    vocab_size=96,
    seq_len=32,
    block_size=8,
    chain_greedy_tokens=16,
    chain_real_ar_weight=0.0,
)
MASK_ID = 3


def _loss(model, tokens, settings: TrainSettings) -> tuple[torch.Tensor, dict[str, float]]:
    length = settings.seq_len
    return chain_loss(
        model,
        tokens,
        settings,
        1.0,
        NoiseSchedule(settings.block_size),
        torch.Generator().manual_seed(7),
        additive_bias(doubled_sequence_visibility(length, settings.block_size))[None, None],
        additive_bias(causal(length))[None, None],
    )


def test_real_ar_guard_adds_the_real_windows_next_token_loss() -> None:
    model = new_model(SETTINGS, MASK_ID, torch.Generator().manual_seed(0))
    tokens = torch.randint(4, SETTINGS.vocab_size, (3, SETTINGS.seq_len), generator=torch.Generator().manual_seed(1))
    causal_bias = additive_bias(causal(SETTINGS.seq_len))[None, None]
    with torch.no_grad():
        unguarded, plain_stats = _loss(model, tokens, SETTINGS)
        guarded, stats = _loss(model, tokens, dataclasses.replace(SETTINGS, chain_real_ar_weight=0.5))
        real, _ = ar_loss(model, tokens, causal_bias)
    assert "real_ar_loss" not in plain_stats
    assert stats["real_ar_loss"] == pytest.approx(real.item(), rel=1e-5)
    assert guarded.item() == pytest.approx(unguarded.item() + 0.5 * real.item(), rel=1e-5)
    # The guard reads the real windows, not the on-policy ones whose tails are the model's greedy text.
    assert stats["ar_loss"] != pytest.approx(stats["real_ar_loss"], rel=1e-3)
