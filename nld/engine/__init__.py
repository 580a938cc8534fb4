"""The serving engine: a KV pool and a scheduler that batches the steps of concurrent requests."""

from __future__ import annotations

from nld.engine.kv_pool import KVLease, KVPool, PoolExhaustedError
from nld.engine.scheduler import Engine, EngineSettings, Update

__all__ = ["Engine", "EngineSettings", "KVLease", "KVPool", "PoolExhaustedError", "Update"]
