"""A fixed budget of KV memory: one KV store whose slots are handed to running requests.

The budget is `total_blocks` blocks of `block_tokens` tokens, preallocated as a store of `slots` slots
(one per request the engine may run at once), each of `slot_blocks` = total_blocks // slots blocks. A
request leases a whole slot before its first step, so a running request can never run out of KV memory
mid-generation; admission waits for a free slot instead, and a request wider than a slot is refused.
Steps read and write the caches where they lie in the store (nld/kv_cache.py). Leased slots are kept at
the front of the store: when a request ends, the cache of the last leased slot moves into its slot
(one copy of that cache's committed tokens), so the running requests' caches stay one window that a
batched step reads as a view. The pool's free count is what the server exports as a metric: after
every request has ended it is back to its initial value.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from nld.errors import NLDError
from nld.kv_cache import KVCache, KVStore
from nld.step import StepBackend


class PoolExhaustedError(NLDError):
    """A request needs more KV tokens than a slot of the pool holds."""


@dataclass
class KVLease:
    """A slot held by one request, and the cache that lives in it."""

    cache: KVCache
    blocks: int
    released: bool = False


class KVPool:
    """`total_blocks` blocks of `block_tokens` token positions, as a store of `slots` equal slots."""

    def __init__(self, backend: StepBackend, total_blocks: int, block_tokens: int = 16, slots: int = 1) -> None:
        if total_blocks < 1 or block_tokens < 1 or slots < 1:
            raise ValueError(
                f"KV pool needs >= 1 block of >= 1 token and >= 1 slot, got {total_blocks} x {block_tokens}, {slots}"
            )
        if total_blocks < slots:
            raise ValueError(f"KV pool of {total_blocks} blocks cannot give each of {slots} slots a block")
        self.backend = backend
        self.total_blocks = total_blocks
        self.block_tokens = block_tokens
        self.slot_blocks = total_blocks // slots
        self.store: KVStore = backend.new_store(slots, self.slot_blocks * block_tokens)  # type: ignore[attr-defined]
        self._leases: list[KVLease] = []  # lease i holds slot i
        self._lock = threading.Lock()

    @property
    def slot_tokens(self) -> int:
        return self.slot_blocks * self.block_tokens

    @property
    def used_blocks(self) -> int:
        return len(self._leases) * self.slot_blocks

    @property
    def free_blocks(self) -> int:
        return self.total_blocks - self.used_blocks

    def check_fits(self, tokens: int) -> None:
        """Raise if a request of `tokens` positions could never be admitted, however idle the pool."""
        if tokens > self.slot_tokens:
            raise PoolExhaustedError(
                f"request needs {tokens} KV positions; each of the {self.store.slots} running requests has room "
                f"for {self.slot_tokens} (kv_blocks x kv_block_tokens / max_batch = {self.total_blocks} x "
                f"{self.block_tokens} / {self.store.slots})"
            )

    def try_lease(self, tokens: int) -> KVLease | None:
        """Lease a slot for a request of `tokens` positions, or None when no slot is free now."""
        self.check_fits(tokens)
        with self._lock:
            if len(self._leases) == self.store.slots:
                return None
            lease = KVLease(self.store.cache(len(self._leases)), self.slot_blocks)
            self._leases.append(lease)
        return lease

    def release(self, lease: KVLease) -> None:
        """Return a lease's slot (idempotent); the last leased slot's cache moves into it."""
        with self._lock:
            if lease.released:
                return
            lease.released = True
            slot = next(index for index, held in enumerate(self._leases) if held is lease)
            last = self._leases.pop()
            if last is not lease:
                self.store.move(last.cache, slot)
                self._leases[slot] = last
