"""Greedy block chains: every block's seed plus the model's own greedy AR continuation, all blocks at once."""

from __future__ import annotations

import pytest
import torch

from nld.evaluate import repeated_ngram_share
from nld.tiny.greedy_chains import greedy_block_chains, greedy_rollouts, on_policy_windows
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


def test_on_policy_windows_end_in_the_models_own_greedy_continuation() -> None:
    model = small_model().eval()
    windows = torch.randint(4, 40, (2, 32), generator=torch.Generator().manual_seed(1))
    mixed, ar_targets = on_policy_windows(model, windows, 12)
    assert torch.equal(mixed[:, :20], windows[:, :20])
    continuation, _ = greedy_rollouts(model, windows[:, :20], 12)
    assert torch.equal(mixed[:, 20:], continuation)
    assert not torch.equal(mixed, windows)
    # AR loss only where the target is a real token: predictions 0..18 (of tokens 1..19).
    assert ar_targets.shape == (2, 31) and ar_targets[:, :19].all() and not ar_targets[:, 19:].any()


def test_on_policy_windows_keep_some_real_tokens() -> None:
    with pytest.raises(ValueError, match="greedy_tokens 31 must leave at least 2 real tokens"):
        on_policy_windows(small_model(), torch.zeros(1, 32, dtype=torch.long), 31)


def test_on_policy_windows_keep_the_real_tail_of_rows_whose_greedy_tail_loops() -> None:
    model = small_model().eval()
    windows = torch.randint(4, 40, (4, 32), generator=torch.Generator().manual_seed(2))
    continuation, _ = greedy_rollouts(model, windows[:, :20], 12)
    shares = [repeated_ngram_share(p, t) for p, t in zip(windows[:, :20].tolist(), continuation.tolist(), strict=True)]
    limit = sorted(shares)[1]  # rows above the second-lowest share count as looping
    mixed, ar_targets = on_policy_windows(model, windows, 12, max_tail_repeats=limit)
    for row, share in enumerate(shares):
        looping = share > limit
        assert torch.equal(mixed[row, 20:], windows[row, 20:] if looping else continuation[row]), row
        assert bool(ar_targets[row].all()) == looping, row  # a real tail carries the AR loss throughout
    assert any(share > limit for share in shares) and any(share <= limit for share in shares)
    unfiltered, _ = on_policy_windows(model, windows, 12, max_tail_repeats=1.0)
    assert torch.equal(unfiltered[:, 20:], continuation)
