"""Per-sequence KV cache: preallocated, append, crop to a length, keep selected positions."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nld.errors import NLDError
from nld.kernels.ops import kv_keep_

KV = tuple[torch.Tensor, torch.Tensor]


class CacheFullError(NLDError):
    """A step would write past the cache's preallocated capacity."""


class KVCache:
    """Keys/values of one sequence for every layer, stored post-RoPE in [layers, KVH, capacity, D].

    Invariant: slots [0, length) hold the K/V of the committed tokens, in position order of commit.
    """

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype, device: torch.device | str
    ) -> None:
        self.keys = torch.zeros(layers, kv_heads, capacity, head_dim, dtype=dtype, device=device)
        self.values = torch.zeros_like(self.keys)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def layer(self, index: int) -> KV:
        """Views of the committed K/V of one layer: ([KVH, length, D], [KVH, length, D])."""
        return self.keys[index, :, : self.length], self.values[index, :, : self.length]

    def append(self, presents: Sequence[KV]) -> None:
        """Write a step's K/V (per layer [KVH, T, D]) after the committed ones."""
        count = presents[0][0].shape[-2]
        end = self.length + count
        if end > self.capacity:
            raise CacheFullError(f"KV cache full: {self.length} + {count} tokens exceed capacity {self.capacity}")
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
        starts = torch.tensor([start], device=self.keys.device)
        counts = torch.tensor([kept], device=self.keys.device)
        for cache in (self.keys, self.values):  # the gather kernel, on [1, layers x heads, capacity, D]
            flat = cache.view(1, -1, *cache.shape[2:])
            kv_keep_(flat, starts, index[None] - start, counts)
        self.length = start + kept
