"""Greedy block chains: every block's seed plus the model's own greedy AR continuation, all blocks at once."""

from __future__ import annotations

import pytest
import torch

from nld.tiny.draft_adapter import greedy_rollouts
from nld.tiny.greedy_chains import greedy_block_chains
from tests.nld.tiny.test_recipe import small_model


def test_chains_equal_one_rollout_per_block() -> None:
    model = small_model().eval()
    windows = torch.randint(4, 40, (3, 32), generator=torch.Generator().manual_seed(0))
    chains = greedy_block_chains(model, windows, 8)
    assert torch.equal(chains[:, ::8], windows[:, ::8])
    for seed in range(0, 32, 8):
        continuation, _ = greedy_rollouts(model, windows[:, : seed + 1], 7)
        assert torch.equal(chains[:, seed + 1 : seed + 8], continuation), seed
    assert not (chains == model.config.mask_token_id).any()


def test_window_must_hold_whole_blocks() -> None:
    with pytest.raises(ValueError, match="multiple of the block size 8"):
        greedy_block_chains(small_model(), torch.zeros(1, 30, dtype=torch.long), 8)
