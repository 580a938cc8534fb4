"""Compiled static-shape steps for the torch backend.

A step is padded to a bucket: its width to the smallest compiled width that holds it (by default the
decode widths: 1 for AR, B for a diffusion/linear-spec block, B(B+1) for a quadratic cycle), its rows
to a power of two. `torch.compile` compiles the network once per (rows, width, adapter) bucket, on first
use, and reports how long that took. The past's length is not bucketed on the CPU: it is a dynamic
dimension of the compiled graph (one graph serves every length). On CUDA the graphs run as CUDA graphs
(mode `reduce-overhead`), which need static shapes, so the past is padded to a multiple of
`CUDA_PREFIX_STEP` there. Steps wider than every compiled width (long prefills) run eagerly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from nld.kv_cache import KV
from nld.model import NLDTransformer

LOG = logging.getLogger("nld.compile")
CUDA_PREFIX_STEP = 128  # past-length bucket of CUDA graphs
MIN_DYNAMIC = 2  # torch specializes sizes 0 and 1: a dynamic dimension is padded to at least this
RECOMPILE_LIMIT = 256  # graphs one compiled network may hold (rows x widths x adapter buckets)


def decode_widths(block_size: int, quadratic_block: int) -> tuple[int, ...]:
    """The step widths the modes use at their default block lengths: 1, B and the quadratic B(B+1)."""
    return tuple(sorted({1, block_size, quadratic_block * (quadratic_block + 1)}))


def row_bucket(rows: int, limit: int | None = None) -> int:
    """Rows padded to a power of two (at most `limit`, the slots of the store they lie in)."""
    bucket = 1 << (rows - 1).bit_length()
    return max(rows, min(bucket, limit)) if limit is not None else bucket


@dataclass
class CompileRecord:
    """One compiled bucket and the seconds its first call took (tracing, compiling, running once)."""

    rows: int
    width: int
    adapter: bool
    seconds: float


@dataclass
class CompiledSteps:
    """The torch.compile'd step network of `model` and the buckets it was compiled for."""

    model: NLDTransformer
    widths: tuple[int, ...]
    on_compile: Callable[[CompileRecord], None] | None = None
    records: list[CompileRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch._dynamo

        self.cuda = self.model.encoder.embed_tokens.weight.device.type == "cuda"
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        torch._dynamo.config.accumulated_recompile_limit = max(
            torch._dynamo.config.accumulated_recompile_limit, RECOMPILE_LIMIT
        )
        mode = "reduce-overhead" if self.cuda else None
        self._compiled = torch.compile(self._network, dynamic=False, mode=mode)
        self._seen: set[tuple[int, int, bool]] = set()

    def _network(
        self, input_ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, past: list[KV], adapter: bool
    ) -> tuple[torch.Tensor, list[KV]]:
        return self.model(input_ids, positions, bias, past, adapter, split_attention=True)

    def width(self, steps: int) -> int | None:
        """The compiled width a step of `steps` tokens is padded to, or None (it runs eagerly)."""
        return next((width for width in self.widths if width >= steps), None)

    def prefix(self, length: int, capacity: int) -> int:
        """The past length a step sees: at least MIN_DYNAMIC; on CUDA a multiple of CUDA_PREFIX_STEP."""
        wanted = max(length, MIN_DYNAMIC)
        if self.cuda:
            wanted = -(-wanted // CUDA_PREFIX_STEP) * CUDA_PREFIX_STEP
        return min(wanted, capacity)

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, past: list[KV], adapter: bool
    ) -> tuple[torch.Tensor, list[KV]]:
        """Run the compiled network (compiling this bucket first, when new)."""
        import torch._dynamo

        if not self.cuda:
            for key, value in past:
                torch._dynamo.mark_dynamic(key, 2)
                torch._dynamo.mark_dynamic(value, 2)
            torch._dynamo.mark_dynamic(bias, 3)
        bucket = (input_ids.shape[0], input_ids.shape[1], adapter)
        if bucket in self._seen:
            return self._compiled(input_ids, positions, bias, past, adapter)
        began = time.perf_counter()
        outputs = self._compiled(input_ids, positions, bias, past, adapter)
        record = CompileRecord(*bucket, time.perf_counter() - began)
        self._seen.add(bucket)
        self.records.append(record)
        adapter_note = " (adapter)" if adapter else ""
        LOG.info("compiled the step for %d rows x %d tokens%s in %.1f s", *bucket[:2], adapter_note, record.seconds)
        if self.on_compile is not None:
            self.on_compile(record)
        return outputs

    def warm_up(self, buckets: Iterable[tuple[int, int, bool]], prefix: int = 64) -> None:
        """Compile `buckets` (rows, width, adapter) now, on zero inputs, instead of on first use."""
        config = self.model.config
        weight = self.model.encoder.embed_tokens.weight
        for rows, width, adapter in buckets:
            if (rows, width, adapter) in self._seen:
                continue
            shape = (rows, config.num_key_value_heads, prefix, config.head_dim)
            past = [(weight.new_zeros(shape), weight.new_zeros(shape)) for _ in range(config.num_hidden_layers)]
            ids = torch.zeros(rows, width, dtype=torch.long, device=weight.device)
            bias = torch.zeros(rows, 1, width, prefix + width, device=weight.device)
            with torch.inference_mode():
                self(ids, ids, bias, past, adapter)
