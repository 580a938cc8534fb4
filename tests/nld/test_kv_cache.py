"""KV cache: crop and keep-selected, and incremental decoding equal to recomputing from scratch."""

from __future__ import annotations

import pytest
import torch

from nld.kv_cache import CacheFullError, KVCache
from nld.sampling import Sampler
from nld.step import StepRequest, bidirectional, causal
from tests.conftest import DEVICES
from tests.nld.helpers import backend_for, raw_step


def _filled(length: int) -> KVCache:
    cache = KVCache(layers=2, kv_heads=1, head_dim=1, capacity=16, dtype=torch.float32, device="cpu")
    values = torch.arange(length, dtype=torch.float32).view(1, length, 1)
    cache.append([(values, -values), (values + 100, -values - 100)])
    return cache


def test_append_crop_keep() -> None:
    cache = _filled(10)
    assert cache.length == 10
    cache.crop(7)
    assert cache.layer(0)[0].flatten().tolist() == list(range(7))
    cache.keep(3, [0, 2, 3])
    assert cache.length == 6
    assert cache.layer(0)[0].flatten().tolist() == [0, 1, 2, 3, 5, 6]
    assert cache.layer(1)[1].flatten().tolist() == [-100, -101, -102, -103, -105, -106]


def test_bad_cache_operations_are_refused() -> None:
    cache = _filled(4)
    with pytest.raises(ValueError, match="crop length"):
        cache.crop(5)
    with pytest.raises(ValueError, match="ascending"):
        cache.keep(1, [2, 1])
    with pytest.raises(CacheFullError, match="capacity 16"):
        cache.append([(torch.zeros(1, 13, 1), torch.zeros(1, 13, 1))] * 2)


@pytest.mark.parametrize("device", DEVICES)
def test_incremental_decoding_equals_recompute(device: str) -> None:
    backend = backend_for("tiny_b8", device)
    tokens = [175, 196, 25, 502, 67]
    cache = backend.new_cache(64)
    logits = raw_step(backend, cache, tokens, causal(len(tokens)), write=True)
    for _ in range(12):
        tokens.append(int(logits[-1].argmax()))
        logits = raw_step(backend, cache, tokens[-1:], causal(1), write=True)
        scratch = raw_step(backend, backend.new_cache(len(tokens)), tokens, causal(len(tokens)))
        torch.testing.assert_close(logits[-1], scratch[-1], atol=1e-5, rtol=0)
    # A 3-token causal chunk after the cache equals the same tokens decoded from scratch.
    chunk = raw_step(backend, cache, [1, 2, 3], causal(3))
    scratch = raw_step(backend, backend.new_cache(len(tokens) + 3), [*tokens, 1, 2, 3], causal(len(tokens) + 3))
    torch.testing.assert_close(chunk, scratch[-3:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_crop_then_reappend_equals_fresh(device: str) -> None:
    backend = backend_for("tiny_b8", device)
    prompt = [11, 12, 13, 14, 15, 16]
    cache = backend.new_cache(32)
    raw_step(backend, cache, prompt, causal(6), write=True)
    raw_step(backend, cache, [7, 8, 9, 10], causal(4), write=True)  # a rejected speculation
    cache.crop(6)
    after_crop = raw_step(backend, cache, [20, 21], causal(2))
    fresh = raw_step(backend, backend.new_cache(8), [*prompt, 20, 21], causal(8))
    torch.testing.assert_close(after_crop, fresh[-2:], atol=1e-5, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_keep_selected_positions_equals_causal_cache(device: str) -> None:
    """Quadratic mode's pattern: a forward of [d0, m, m, d1, m, m] (d's a causal chain), keep only d0, d1."""
    backend = backend_for("tiny_b8", device)
    prompt, d0, d1, mask = [30, 31, 32], 40, 41, backend.config.mask_token_id
    cache = backend.new_cache(32)
    raw_step(backend, cache, prompt, causal(3), write=True)
    visible = torch.zeros(6, 6, dtype=torch.bool)
    visible[:3, 0] = True
    visible[3:, [0, 3]] = True
    visible[1:3, 1:3] = bidirectional(2)
    visible[4:6, 4:6] = bidirectional(2)
    tokens = torch.tensor([d0, mask, mask, d1, mask, mask])
    positions = torch.tensor([3, 4, 5, 4, 5, 6])
    backend.step([StepRequest(cache, tokens, positions, visible, Sampler(), write_cache=True)])
    cache.keep(3, [0, 3])
    after_keep = raw_step(backend, cache, [50], causal(1))
    fresh = raw_step(backend, backend.new_cache(6), [*prompt, d0, d1, 50], causal(6))
    torch.testing.assert_close(after_keep, fresh[-1:], atol=1e-5, rtol=0)
