"""A fixed budget of KV memory, handed out to requests in blocks and returned when they end.

Every request leases the blocks its widest possible cache needs before its first step, so a running
request can never run out of KV memory mid-generation; admission waits instead. The pool's free count
is what the server exports as a metric: after every request has ended it is back to its initial value.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

from nld.errors import NLDError
from nld.kv_cache import KVCache
from nld.step import StepBackend


class PoolExhaustedError(NLDError):
    """A request needs more KV blocks than the whole pool holds."""


@dataclass
class KVLease:
    """Blocks held by one request, and the cache that lives in them."""

    blocks: int
    cache: KVCache
    released: bool = False


class KVPool:
    """`total_blocks` blocks of `block_tokens` token slots each."""

    def __init__(self, backend: StepBackend, total_blocks: int, block_tokens: int = 16) -> None:
        if total_blocks < 1 or block_tokens < 1:
            raise ValueError(f"KV pool needs >= 1 block of >= 1 token, got {total_blocks} x {block_tokens}")
        self.backend = backend
        self.total_blocks = total_blocks
        self.block_tokens = block_tokens
        self._free = total_blocks
        self._lock = threading.Lock()

    @property
    def free_blocks(self) -> int:
        return self._free

    @property
    def used_blocks(self) -> int:
        return self.total_blocks - self._free

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_tokens)

    def check_fits(self, tokens: int) -> None:
        """Raise if a request of `tokens` slots could never be admitted, however idle the pool."""
        if self.blocks_for(tokens) > self.total_blocks:
            raise PoolExhaustedError(
                f"request needs {tokens} KV slots; the pool holds {self.total_blocks * self.block_tokens}"
            )

    def try_lease(self, tokens: int) -> KVLease | None:
        """Lease enough blocks for `tokens` slots, or None when they are not free now."""
        self.check_fits(tokens)
        blocks = self.blocks_for(tokens)
        with self._lock:
            if blocks > self._free:
                return None
            self._free -= blocks
        return KVLease(blocks, self.backend.new_cache(blocks * self.block_tokens))

    def release(self, lease: KVLease) -> None:
        """Return a lease's blocks (idempotent)."""
        with self._lock:
            if lease.released:
                return
            lease.released = True
            self._free += lease.blocks
