"""What batching backends share: laying the steps of many requests out as one padded forward whose
past K/V are read where they live in the KV store, and turning per-token outputs into selected ids.
Subclasses run the forward itself.

Rows of a batch are KV-store slots. When the requests' caches are slots of one store that lie within a
window no wider than the batch, the past of every layer is a view of that window (`in_place`): no cache
is copied, and slots in the window that are not part of the step ride along as padding rows. Otherwise
(caches of different stores, or slots spread wider than the batch) the past is gathered into a padded
copy, as every step did before the store existed. After the forward, each request that writes its cache
gets only its new tokens' K/V written, in one index operation per store.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nld.config import NLDConfig
from nld.kv_cache import KV, KVCache, KVStore
from nld.penalties import apply_penalties
from nld.sampling import row_logprobs, select_tokens
from nld.step import PartialStepError, StepRequest, StepResult


@dataclass(frozen=True)
class StepShape:
    """How a step is laid out: `rows` batch rows, `width` tokens per row, a past of `prefix` positions."""

    rows: int
    width: int
    prefix: int


@dataclass
class StepBatch:
    """One forward's inputs. `row_of[i]` is the batch row of request i; `in_place` tells whether `past`
    are views of a KV store (else a padded copy)."""

    input_ids: torch.Tensor  # [rows, width] int64
    positions: torch.Tensor  # [rows, width] int64
    bias: torch.Tensor  # [rows, 1, width, prefix + width] float32: 0 where attending, -inf elsewhere
    past: list[KV]  # per layer [rows, KVH, prefix, D]
    row_of: list[int]
    in_place: bool


def _window(requests: list[StepRequest], rows: int) -> int | None:
    """The first slot of a window of `rows` slots of one store holding every request's slot, or None."""
    store = requests[0].cache.store
    slots = [request.cache.slot for request in requests]
    if any(request.cache.store is not store for request in requests) or len(set(slots)) != len(slots):
        return None
    low, high = min(slots), max(slots) + 1
    if high - low > rows or rows > store.slots:
        return None
    return min(low, store.slots - rows)


def _uniform(requests: list[StepRequest], shape: StepShape) -> bool:
    """Whether every row of the batch is a request's own, as wide as the batch."""
    return len(requests) == shape.rows and all(request.token_ids.shape[0] == shape.width for request in requests)


def _by_row(row_of: list[int]) -> list[int]:
    """Request indices in the order of their batch rows."""
    return sorted(range(len(row_of)), key=row_of.__getitem__)


def _visible(requests: list[StepRequest], row_of: list[int], shape: StepShape) -> torch.Tensor:
    """Which positions of [past | step] each query attends to, [rows, width, prefix + width] bool. Rows and
    columns that are padding attend to themselves only (no row without a key: no NaN)."""
    rows, width, prefix = shape.rows, shape.width, shape.prefix
    lengths = torch.zeros(rows, dtype=torch.long)
    counts = torch.zeros(rows, dtype=torch.long)
    for row, request in zip(row_of, requests, strict=True):
        lengths[row], counts[row] = request.cache.length, request.token_ids.shape[0]
    allowed = torch.zeros(rows, width, prefix + width, dtype=torch.bool)
    allowed[:, :, :prefix] = (torch.arange(prefix) < lengths[:, None])[:, None, :]
    if _uniform(requests, shape):
        allowed[:, :, prefix:] = torch.stack([requests[i].visibility.cpu() for i in _by_row(row_of)])
    else:
        for row, request in zip(row_of, requests, strict=True):
            count = request.token_ids.shape[0]
            allowed[row, :count, prefix : prefix + count] = request.visibility.cpu()
    steps = torch.arange(width)
    padding = steps[None, :] >= counts[:, None]  # [rows, width]
    diagonal = allowed[:, steps, prefix + steps]
    allowed[:, steps, prefix + steps] = diagonal | padding
    return allowed


def build_batch(requests: list[StepRequest], shape: StepShape, device: torch.device, dtype: torch.dtype) -> StepBatch:
    """Lay `requests` out as a batch of `shape` (rows >= requests, width >= every step, prefix >= every
    cache length); the past is read in place when the caches allow it."""
    first = _window(requests, shape.rows)
    in_place = first is not None
    row_of = [request.cache.slot - first for request in requests] if first is not None else list(range(len(requests)))
    input_ids = torch.zeros(shape.rows, shape.width, dtype=torch.long)
    positions = torch.zeros_like(input_ids)
    if _uniform(requests, shape):  # every row is a request's, of the full width: stack them
        input_ids = torch.stack([requests[i].token_ids.cpu() for i in _by_row(row_of)])
        positions = torch.stack([requests[i].positions.cpu() for i in _by_row(row_of)])
    else:
        for row, request in zip(row_of, requests, strict=True):
            count = request.token_ids.shape[0]
            input_ids[row, :count] = request.token_ids
            positions[row, :count] = request.positions
    allowed = _visible(requests, row_of, shape)
    bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill_(~allowed, float("-inf")).unsqueeze(1)
    if first is not None:
        store = requests[0].cache.store
        window = slice(first, first + shape.rows)
        past = [
            (store.keys[layer, window, :, : shape.prefix], store.values[layer, window, :, : shape.prefix])
            for layer in range(store.layers)
        ]
    else:
        past = _gathered_past(requests, shape, dtype, device)
    return StepBatch(input_ids.to(device), positions.to(device), bias.to(device), past, row_of, in_place)


def _gathered_past(requests: list[StepRequest], shape: StepShape, dtype: torch.dtype, device: torch.device) -> list[KV]:
    """A padded copy of the requests' committed K/V, per layer [rows, KVH, prefix, D]."""
    store = requests[0].cache.store
    past = []
    for layer in range(store.layers):
        size = (shape.rows, store.keys.shape[2], shape.prefix, store.keys.shape[4])
        keys = torch.zeros(size, dtype=dtype, device=device)
        values = torch.zeros_like(keys)
        for row, request in enumerate(requests):
            key, value = request.cache.layer(layer)
            keys[row, :, : key.shape[1]] = key
            values[row, :, : value.shape[1]] = value
        past.append((keys, values))
    return past


class PaddedBatchBackend:
    """A step backend over a network with the ONNX step signature. Subclasses set config, dtype,
    device and has_adapter, and implement `_forward` and `_to_logits`; they may override `_shape` (how a
    step is bucketed) and `_all_logits` (logits of every row, computed with the forward)."""

    config: NLDConfig
    dtype: torch.dtype
    device: torch.device
    has_adapter: bool
    gathered_steps: int = 0  # steps whose past could not be read in place (copied)

    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, past: list[KV], adapter: bool
    ) -> tuple[torch.Tensor, list[KV]]:
        """(per-token outputs [B, T, ...], presents per layer [B, KVH, T, D])."""
        raise NotImplementedError

    def _to_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """float32 logits of some rows of `_forward`'s outputs."""
        raise NotImplementedError

    @property
    def shared_width(self) -> int:
        """Steps up to this many tokens share one forward in the engine: on a GPU a wider step costs about
        what a narrow one does; on a CPU it costs in proportion to its tokens, so none are padded."""
        return 64 if self.device.type == "cuda" else 1

    def new_cache(self, capacity: int) -> KVCache:
        """A cache with a store of its own (one slot of `capacity` tokens)."""
        c = self.config
        return KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, capacity, self.dtype, self.device)

    def new_store(self, slots: int, capacity: int) -> KVStore:
        """A KV store of `slots` slots of `capacity` tokens each, for an engine's running requests."""
        c = self.config
        return KVStore(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, slots, capacity, self.dtype, self.device)

    def _shape(self, requests: list[StepRequest]) -> StepShape:
        """The exact shape of a step: as many rows as requests, its widest step, its longest past."""
        width = max(request.token_ids.shape[0] for request in requests)
        return StepShape(len(requests), width, max(request.cache.length for request in requests))

    def step(self, requests: list[StepRequest]) -> list[StepResult]:
        """Run one forward over all requests (padded into one batch) and select tokens per request."""
        adapters = {request.adapter for request in requests}
        if len(adapters) > 1:
            raise ValueError("one step cannot mix adapter-on and adapter-off requests")
        batch = build_batch(requests, self._shape(requests), self.device, self.dtype)
        if not batch.in_place:
            self.gathered_steps += 1
        outputs, presents = self._forward(batch.input_ids, batch.positions, batch.bias, batch.past, adapters.pop())
        results: list[StepResult | None] = []
        errors: dict[int, Exception] = {}
        writes: list[tuple[StepRequest, int]] = []
        for index, (request, row) in enumerate(zip(requests, batch.row_of, strict=True)):
            try:  # one request's selection or cache room failing must not fail the others
                result = self._result(request, row, outputs)
                if request.write_cache:
                    request.cache.check_room(request.token_ids.shape[0])
            except Exception as error:
                results.append(None)
                errors[index] = error
                continue
            results.append(result)
            if request.write_cache:
                writes.append((request, row))
        self._write(writes, presents)
        if errors:
            raise PartialStepError(results, errors)
        return results  # type: ignore[return-value]

    def _write(self, writes: list[tuple[StepRequest, int]], presents: list[KV]) -> None:
        """Write the new tokens' K/V of every (request, batch row) in `writes` after its committed ones."""
        by_store: dict[int, list[tuple[StepRequest, int]]] = {}
        for request, row in writes:
            by_store.setdefault(id(request.cache.store), []).append((request, row))
        for members in by_store.values():
            store = members[0][0].cache.store
            rows, steps, slots, positions = [], [], [], []
            for request, row in members:
                count = request.token_ids.shape[0]
                rows += [row] * count
                steps += range(count)
                slots += [request.cache.slot] * count
                positions += range(request.cache.length, request.cache.length + count)
            take = (torch.tensor(rows, device=self.device), torch.tensor(steps, device=self.device))
            keys = torch.stack([key.permute(0, 2, 1, 3)[take] for key, _ in presents])  # [layers, N, KVH, D]
            values = torch.stack([value.permute(0, 2, 1, 3)[take] for _, value in presents])
            store.write(torch.tensor(slots), torch.tensor(positions), keys, values)
            for request, _ in members:
                request.cache.length += request.token_ids.shape[0]

    def _result(self, request: StepRequest, row: int, outputs: torch.Tensor) -> StepResult:
        """Select the tokens of one request's rows of a batched forward."""
        count = request.token_ids.shape[0]
        own = outputs[row, :count]  # rows index the request's own tokens, not the padded batch
        wanted = own if request.rows is None else own[request.rows.to(own.device)]
        logits = self._to_logits(wanted)
        scored = logits if request.penalties is None else apply_penalties(logits, request.penalties)
        ids, confidence = select_tokens(scored, request.sampler)
        logprobs = None
        if request.logprobs is not None:
            banned = request.sampler.banned_ids
            logprobs = row_logprobs(logits, ids, banned, request.logprobs, request.logprob_rows).cpu()
        # Results live on the host: policies are device-agnostic and read a few ids per token.
        return StepResult(ids.cpu(), confidence.cpu(), logits.cpu() if request.return_logits else None, logprobs)
