"""Compiled static-shape steps for the torch backend.

A step of one of the compiled widths (by default the decode widths: 1 for AR, B for a diffusion /
linear-spec block, B(B+1) for a quadratic cycle) is padded to a bucket of rows, a power of two.
`torch.compile` compiles the network once per (rows, width, adapter) bucket, on first use, and reports
how long that took. The past's length is not bucketed on the CPU: it is a dynamic
dimension of the compiled graph (one graph serves every length). On CUDA the graphs run as CUDA graphs
(mode `reduce-overhead`), which need static shapes, so the past is padded to a multiple of
`CUDA_PREFIX_STEP` there. Steps of other widths (prefills, quadratic's first pass) run eagerly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch

from nld.kv_cache import KV, KVStore
from nld.model import NLDTransformer

LOG = logging.getLogger("nld.compile")
CUDA_PREFIX_STEP = 128  # past-length bucket of CUDA graphs
MIN_DYNAMIC = 2  # torch specializes sizes 0 and 1: a dynamic dimension is padded to at least this
RECOMPILE_LIMIT = 256  # graphs one compiled network may hold (rows x widths x adapter buckets)


def step_network(
    model: NLDTransformer,
    input_ids: torch.Tensor,
    positions: torch.Tensor,
    bias: torch.Tensor,
    past_keys: torch.Tensor,
    past_values: torch.Tensor,
    adapter: bool,
    split_attention: bool = True,
) -> tuple[torch.Tensor, KV]:
    """The network over a batch whose past is two tensors [layers, rows, KVH, prefix, D] (views of a KV
    store); returns (hidden, (present keys, present values) [layers, rows, KVH, T, D]). Two stacked
    tensors in and out, not one per layer, keep a compiled graph's inputs and outputs free of aliases,
    whose handling costs on every call. `split_attention` attends to the past where it lies (what a
    compiled graph fuses); without it each layer joins past and new K/V for one fused SDPA call (faster
    eagerly: docs/runtime.md)."""
    past = [(past_keys[layer], past_values[layer]) for layer in range(past_keys.shape[0])]
    hidden, presents = model(input_ids, positions, bias, past, adapter, split_attention=split_attention)
    return hidden, stack_presents(presents)


def stack_presents(presents: list[KV]) -> KV:
    """Per-layer presents [rows, KVH, T, D] as two tensors [layers, rows, KVH, T, D] (fresh, so the outputs
    of a compiled graph alias nothing: aliased outputs are regenerated as views on every call)."""
    return torch.stack([key for key, _ in presents]), torch.stack([value for _, value in presents])


# Whether steps compile when neither --compile nor --no-compile is given, per device type. Measured on
# this project's CPU machines (docs/bench.md, "The runtime benchmark"): compiled decoding of the built-in
# model is 1.6-1.9x faster at one user, but each of an engine's shape buckets takes 2-25 s to compile,
# which only a long-running server earns back; so a CPU runs eagerly unless asked. On CUDA (CUDA graphs)
# nothing has been measured yet (scripts/gpu_bench_8b.py measures both): eager until it is.
COMPILE_BY_DEFAULT = {"cpu": False, "cuda": False}


def resolve_compile(compile: bool | None, device: str | torch.device) -> bool:
    """--compile / --no-compile, or the measured default of the device's type when neither was given."""
    return COMPILE_BY_DEFAULT.get(torch.device(device).type, False) if compile is None else compile


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
    block: int  # the draft width (linear-spec's block at its default length)
    on_compile: Callable[[CompileRecord], None] | None = None
    records: list[CompileRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        import torch._dynamo

        weight = self.model.encoder.embed_tokens.weight
        self.cuda = weight.device.type == "cuda"
        self.excluded = self.model.config.mask_token_id  # the id the in-graph greedy choice never makes
        self._excluded = torch.tensor([self.excluded], device=weight.device)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        torch._dynamo.config.accumulated_recompile_limit = max(
            torch._dynamo.config.accumulated_recompile_limit, RECOMPILE_LIMIT
        )
        if self.cuda:  # CUDA graphs: the launches of a whole step replayed at once
            self._compiled = torch.compile(self._network, dynamic=False, mode="reduce-overhead")
        else:  # a C++ wrapper around the kernels: ~0.4 ms less per step of the built-in model than Python's
            self._compiled = torch.compile(self._network, dynamic=False, options={"cpp_wrapper": True})
        self._seen: set[tuple[int, int, bool]] = set()

    def _network(self, *inputs: object) -> tuple[torch.Tensor, KV, KV]:
        """The step, the head over every row (float32 logits) and the greedy choice with the mask id
        excluded (ids, confidence), all in one graph: a greedy request needs nothing more."""
        hidden, presents = step_network(self.model, *inputs)  # type: ignore[arg-type]
        logits = self.model.logits(hidden).float()
        scores = logits.index_fill(-1, self._excluded, float("-inf"))
        best = scores.max(dim=-1)
        confidence = 1.0 / torch.exp(scores - best.values.unsqueeze(-1)).sum(-1)  # softmax of the argmax
        return logits, presents, (best.indices, confidence)

    def width(self, steps: int) -> int | None:
        """The compiled width of a step of `steps` tokens, or None: it runs eagerly. Only steps of exactly a
        compiled width compile: padding a prefill to the next one (a 30-token prompt to a 72-token
        quadratic cycle) cost more compute on a CPU than the eager step's overhead."""
        return steps if steps in self.widths else None

    def prefix(self, length: int, capacity: int) -> int:
        """The past length a step sees: at least MIN_DYNAMIC; on CUDA a multiple of CUDA_PREFIX_STEP."""
        wanted = max(length, MIN_DYNAMIC)
        if self.cuda:
            wanted = -(-wanted // CUDA_PREFIX_STEP) * CUDA_PREFIX_STEP
        return min(wanted, capacity)

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        bias: torch.Tensor,
        past_keys: torch.Tensor,
        past_values: torch.Tensor,
        adapter: bool,
    ) -> tuple[torch.Tensor, KV, KV]:
        """Run the compiled network (compiling this bucket first, when new): (logits, presents, (greedy
        ids, their confidence)), per row."""
        import torch._dynamo

        inputs = (input_ids, positions, bias, past_keys, past_values, adapter)
        if not self.cuda:
            torch._dynamo.mark_dynamic(past_keys, 3)
            torch._dynamo.mark_dynamic(past_values, 3)
            torch._dynamo.mark_dynamic(bias, 3)
        bucket = (input_ids.shape[0], input_ids.shape[1], adapter)
        if bucket in self._seen:
            return self._compiled(*inputs)
        began = time.perf_counter()
        outputs = self._compiled(*inputs)
        record = CompileRecord(*bucket, time.perf_counter() - began)
        self._seen.add(bucket)
        self.records.append(record)
        adapter_note = " (adapter)" if adapter else ""
        LOG.info("compiled the step for %d rows x %d tokens%s in %.1f s", *bucket[:2], adapter_note, record.seconds)
        if self.on_compile is not None:
            self.on_compile(record)
        return outputs

    def warm_up(self, buckets: Iterable[tuple[int, int, bool]], store: KVStore, prefix: int = 64) -> None:
        """Compile `buckets` (rows, width, adapter) now instead of on first use, on views of `store` (a
        graph is guarded on its inputs' strides and dispatch keys: warm-up inputs must look like a step's)."""
        weight = self.model.encoder.embed_tokens.weight
        prefix = min(max(prefix, MIN_DYNAMIC), store.capacity)
        for rows, width, adapter in buckets:
            if (rows, width, adapter) in self._seen or rows > store.slots:
                continue
            past = [tensor[:rows, :, :, :prefix].transpose(0, 1) for tensor in (store.keys, store.values)]
            ids, positions = (torch.zeros(rows, width, dtype=torch.long, device=weight.device) for _ in range(2))
            bias = torch.zeros(rows, 1, width, prefix + width, device=weight.device)
            with torch.inference_mode():
                self(ids, positions, bias, *past, adapter)

    def buckets(self, max_rows: int, adapter: bool) -> list[tuple[int, int, bool]]:
        """Every bucket an engine of `max_rows` running requests may step: each row bucket at each compiled
        width, and with the adapter at the draft width (the config's block) when the model has one."""
        rows = sorted({row_bucket(count, max_rows) for count in range(1, max_rows + 1)})
        draft = [(count, self.block, True) for count in rows] if adapter else []
        return [(count, width, False) for count in rows for width in self.widths] + draft
