"""The KV store: preallocated slots that steps read and write where they live.

`KVStore` holds the keys and values of `slots` sequences in two tensors [slots, layers, KVH, capacity, D]
(post-RoPE). A running sequence owns one slot, seen through its `KVCache`: slots [0, length) of it hold
the K/V of its committed tokens, in position order of commit; what lies past `length` is scratch.
A step reads the committed K/V in place (a view, never a copy), writes only its new tokens' K/V, and the
policies' cache operations are index operations on the slot: crop sets the length, keep gathers the
kept positions to the front. A batched step over neighbouring slots reads all their caches as one
strided view [layers, rows, KVH, length, D]; a slot's own cache is one contiguous block.

A `layer_major` store lays the same logical tensors out as [layers, slots, KVH, capacity, D] in memory,
so that one layer's caches of neighbouring slots are one contiguous block (`layer_blocks`): what a
runtime that takes whole buffers (onnxruntime's I/O binding) can read and write where they lie.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy
import torch

from nld.errors import NLDError
from nld.kernels.ops import kv_keep_

KV = tuple[torch.Tensor, torch.Tensor]


class CacheFullError(NLDError):
    """A step would write past the cache's preallocated capacity."""


def zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A zero tensor. On the CPU its pages come from calloc, so memory is only committed where it is
    written: a large store costs what its sequences use. (The zeros matter: attention multiplies masked
    positions' values by a zero weight, and 0 x NaN garbage would be NaN.)"""
    if torch.device(device).type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    size = torch.empty((), dtype=dtype).element_size()
    count = 1
    for extent in shape:
        count *= extent
    return torch.from_numpy(numpy.zeros(count * size, dtype=numpy.uint8)).view(dtype).view(shape)


class KVStore:
    """K/V of `slots` sequences of up to `capacity` tokens each, for every layer."""

    def __init__(
        self,
        layers: int,
        kv_heads: int,
        head_dim: int,
        slots: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str,
        layer_major: bool = False,
    ) -> None:
        if slots < 1 or capacity < 1:
            raise ValueError(f"a KV store needs >= 1 slot of >= 1 token, got {slots} x {capacity}")
        shape = (slots, layers, kv_heads, capacity, head_dim)
        if layer_major:  # the same logical [slots, layers, ...] tensors over [layers, slots, ...] memory
            stored = (layers, slots, kv_heads, capacity, head_dim)
            self.keys = zeroed(stored, dtype, device).transpose(0, 1)
            self.values = zeroed(stored, dtype, device).transpose(0, 1)
        else:
            self.keys = zeroed(shape, dtype, device)
            self.values = zeroed(shape, dtype, device)
        self.layer_major = layer_major

    @property
    def slots(self) -> int:
        return self.keys.shape[0]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def layers(self) -> int:
        return self.keys.shape[1]

    def layer_blocks(self, first: int, rows: int) -> KV:
        """Keys and values [layers, rows, KVH, capacity, D] of slots [first, first + rows), each layer's
        one contiguous block (a layer-major store only)."""
        if not self.layer_major:
            raise ValueError("only a layer-major KV store holds each layer's slots in one block")
        if not (first >= 0 and rows >= 1 and first + rows <= self.slots):
            raise ValueError(f"slots [{first}, {first + rows}) outside [0, {self.slots})")
        return self.keys[first : first + rows].transpose(0, 1), self.values[first : first + rows].transpose(0, 1)

    def cache(self, slot: int) -> KVCache:
        """The (empty) cache of `slot`."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} outside [0, {self.slots})")
        return KVCache.in_store(self, slot)

    def move(self, cache: KVCache, slot: int) -> None:
        """Move `cache`'s committed K/V into the free `slot` and point the cache at it (compaction)."""
        if cache.store is not self:
            raise ValueError("cannot move a cache into another store's slot")
        length = cache.length
        for tensor in (self.keys, self.values):
            tensor[slot, :, :, :length] = tensor[cache.slot, :, :, :length]
        cache.slot = slot

    def write(self, slots: torch.Tensor, positions: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write N tokens' K/V, keys/values [N, layers, KVH, D], at (slots[i], positions[i]) of every layer:
        two index operations, whatever the number of sequences."""
        index = (slots.to(self.keys.device), positions.to(self.keys.device))
        for store, new in ((self.keys, keys), (self.values, values)):
            # [slots, layers, KVH, capacity, D] -> [slots, capacity, layers, KVH, D] (a view)
            store.permute(0, 3, 1, 2, 4).index_put_(index, new.to(store.dtype))


class KVCache:
    """One sequence's view of its slot: [layers, KVH, capacity, D] keys and values, `length` committed.

    `KVCache(layers, kv_heads, head_dim, capacity, dtype, device)` makes a cache with a store of its own
    (one slot); an engine's caches share one store (`KVStore.cache`)."""

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        self.store = KVStore(layers, kv_heads, head_dim, 1, capacity, dtype, device)
        self.slot = 0
        self.length = 0

    @classmethod
    def in_store(cls, store: KVStore, slot: int) -> KVCache:
        cache = cls.__new__(cls)
        cache.store, cache.slot, cache.length = store, slot, 0
        return cache

    @property
    def keys(self) -> torch.Tensor:
        return self.store.keys[self.slot]

    @property
    def values(self) -> torch.Tensor:
        return self.store.values[self.slot]

    @property
    def capacity(self) -> int:
        return self.store.capacity

    def layer(self, index: int) -> KV:
        """Views of the committed K/V of one layer: ([KVH, length, D], [KVH, length, D])."""
        return self.keys[index, :, : self.length], self.values[index, :, : self.length]

    def check_room(self, count: int) -> None:
        """Raise CacheFullError unless `count` more tokens fit after the committed ones."""
        if self.length + count > self.capacity:
            raise CacheFullError(f"KV cache full: {self.length} + {count} tokens exceed capacity {self.capacity}")

    def append(self, presents: Sequence[KV]) -> None:
        """Write a step's K/V (per layer [KVH, T, D]) after the committed ones."""
        count = presents[0][0].shape[-2]
        self.check_room(count)
        end = self.length + count
        for index, (key, value) in enumerate(presents):
            self.keys[index, :, self.length : end] = key
            self.values[index, :, self.length : end] = value
        self.length = end

    def crop(self, length: int) -> None:
        """Forget every slot from `length` on (rejected speculative tokens)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"crop length {length} outside [0, {self.length}]")
        self.length = length

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        """Of the slots from `start` on, keep only `start + offsets[i]` (ascending), compacted to `start + i`."""
        if not 0 <= start <= self.length:
            raise ValueError(f"keep start {start} outside [0, {self.length}]")
        index = torch.as_tensor(list(offsets), dtype=torch.long, device=self.keys.device) + start
        if len(offsets) and (index.max() >= self.length or (index.diff() <= 0).any()):
            raise ValueError(f"keep offsets {list(offsets)} must be ascending and below {self.length - start}")
        kept = len(offsets)
        layers = self.store.layers
        starts = torch.full((layers,), start, device=self.keys.device)
        counts = torch.full((layers,), kept, device=self.keys.device)
        moved = (index - start).expand(layers, kept)
        for cache in (self.keys, self.values):  # the gather kernel on the slot: [layers, heads, capacity, D]
            kv_keep_(cache, starts, moved, counts)
        self.length = start + kept
