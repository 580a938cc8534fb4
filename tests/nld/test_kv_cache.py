"""KV cache: crop and keep-selected, and incremental decoding equal to recomputing from scratch."""

from __future__ import annotations

import pytest
import torch

from nld.kv_cache import CacheFullError, KVCache
from nld.sampling import Sampler
from nld.step import PartialStepError, StepRequest, bidirectional, causal
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


def _step(cache: KVCache, tokens: list[int], visibility: torch.Tensor, write: bool = True) -> StepRequest:
    ids = torch.tensor(tokens)
    positions = torch.arange(cache.length, cache.length + len(tokens))
    return StepRequest(cache, ids, positions, visibility, Sampler(), write_cache=write, return_logits=True)


def test_caches_of_a_store_are_views_of_it_and_steps_read_them_in_place() -> None:
    backend = backend_for("tiny_b8")
    store = backend.new_store(slots=4, capacity=32)
    caches = [store.cache(slot) for slot in range(3)]
    prompts = [[1, 2, 3, 4, 5], [9, 8], [20, 21, 22]]
    gathered = backend.gathered_steps
    # A batched prefill of three neighbouring slots writes every cache in its own slot of the store ...
    backend.step([_step(cache, prompt, causal(len(prompt))) for cache, prompt in zip(caches, prompts, strict=True)])
    for cache, prompt in zip(caches, prompts, strict=True):
        assert cache.length == len(prompt)
        assert cache.keys.data_ptr() == store.keys[cache.slot].data_ptr()
        assert cache.keys[:, :, : len(prompt)].abs().sum() > 0 and cache.keys[:, :, len(prompt) :].abs().sum() == 0
    # ... and a batched step over them reads the store in place and equals each cache decoded alone.
    steps = [([40], causal(1)), ([41, 100, 100], bidirectional(3)), ([42, 43], causal(2))]
    batched = backend.step([_step(c, t, v, write=False) for c, (t, v) in zip(caches, steps, strict=True)])
    assert backend.gathered_steps == gathered
    for prompt, result, (tokens, visibility) in zip(prompts, batched, steps, strict=True):
        fresh = backend.new_cache(16)
        raw_step(backend, fresh, prompt, causal(len(prompt)), write=True)
        torch.testing.assert_close(result.logits, raw_step(backend, fresh, tokens, visibility), atol=1e-5, rtol=0)


def test_slots_too_far_apart_are_gathered_and_give_the_same_result() -> None:
    backend = backend_for("tiny_b8")
    store = backend.new_store(slots=4, capacity=16)
    first, last = store.cache(0), store.cache(3)
    for cache in (first, last):
        backend.step([_step(cache, [5, 6, 7], causal(3))])
    gathered = backend.gathered_steps
    spread = backend.step([_step(first, [8], causal(1), False), _step(last, [9], causal(1), False)])
    assert backend.gathered_steps == gathered + 1  # slots 0 and 3 lie further apart than two rows
    for result, token in zip(spread, (8, 9), strict=True):
        fresh = backend.new_cache(8)
        raw_step(backend, fresh, [5, 6, 7], causal(3), write=True)
        torch.testing.assert_close(result.logits, raw_step(backend, fresh, [token], causal(1)), atol=1e-5, rtol=0)


def test_moving_a_cache_keeps_its_tokens_and_later_steps_equal() -> None:
    backend = backend_for("tiny_b8")
    store = backend.new_store(slots=3, capacity=16)
    cache = store.cache(2)
    backend.step([_step(cache, [5, 6, 7, 8], causal(4))])
    before = raw_step(backend, cache, [9], causal(1))
    store.move(cache, 0)
    assert cache.slot == 0 and cache.length == 4
    torch.testing.assert_close(raw_step(backend, cache, [9], causal(1)), before, atol=0, rtol=0)
    with pytest.raises(ValueError, match="another store"):
        backend.new_store(1, 16).move(cache, 0)


def test_a_write_past_the_capacity_fails_that_request_alone() -> None:
    backend = backend_for("tiny_b8")
    store = backend.new_store(slots=2, capacity=8)
    roomy, full = store.cache(0), store.cache(1)
    backend.step([_step(full, [1, 2, 3, 4, 5, 6], causal(6))])
    with pytest.raises(PartialStepError) as raised:
        backend.step([_step(roomy, [1, 2, 3], causal(3)), _step(full, [7, 8, 9], causal(3))])
    assert isinstance(raised.value.errors[1], CacheFullError) and "capacity 8" in str(raised.value.errors[1])
    assert roomy.length == 3 and full.length == 6


def test_a_layer_major_store_holds_each_layers_window_in_one_block() -> None:
    from nld.kv_cache import KVStore

    store = KVStore(3, 2, 4, 5, 16, torch.float32, "cpu", layer_major=True)
    plain = KVStore(3, 2, 4, 5, 16, torch.float32, "cpu")
    assert store.keys.shape == plain.keys.shape == (5, 3, 2, 16, 4)
    for target in (store, plain):  # the same logical writes and cache operations on both layouts
        cache = target.cache(2)
        steps = torch.arange(6 * 2 * 4, dtype=torch.float32).view(6, 2, 4)
        cache.append([(steps.transpose(0, 1) + layer, -steps.transpose(0, 1)) for layer in range(3)])
        cache.keep(2, [1, 3])
        target.move(cache, 1)
    torch.testing.assert_close(store.keys, plain.keys)
    torch.testing.assert_close(store.values, plain.values)
    keys, values = store.layer_blocks(1, 3)
    assert keys.shape == (3, 3, 2, 16, 4) and all(block.is_contiguous() for block in (*keys, *values))
    keys[2, 0, 1, 0, 3] = 7.0  # a block is the store's memory, not a copy
    assert store.keys[1, 2, 1, 0, 3] == 7.0
    with pytest.raises(ValueError, match="layer-major"):
        plain.layer_blocks(0, 1)
    with pytest.raises(ValueError, match="outside"):
        store.layer_blocks(3, 3)
