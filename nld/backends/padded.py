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

import time
from dataclasses import dataclass

import torch

from nld.config import NLDConfig
from nld.kv_cache import KV, KVCache, KVStore
from nld.penalties import apply_penalties
from nld.sampling import row_logprobs, select_tokens
from nld.step import PartialStepError, StepRequest, StepResult

FEW_WRITES = 4  # up to this many requests' K/V are written by slice copies, more by one index operation
SelectedIds = tuple[torch.Tensor, torch.Tensor]  # (ids, confidence) of a request's wanted rows


@dataclass(frozen=True)
class StepShape:
    """How a step is laid out: `rows` batch rows, `width` tokens per row, a past of `prefix` positions."""

    rows: int
    width: int
    prefix: int


@dataclass
class StepBatch:
    """One forward's inputs. `row_of[i]` is the batch row of request i; `in_place` tells whether `past`
    are views of a KV store (else a padded copy): of `store`'s slots [first, first + rows). `lengths`: each
    row's committed cache length (0 for rows that only ride along)."""

    input_ids: torch.Tensor  # [rows, width] int64
    positions: torch.Tensor  # [rows, width] int64
    bias: torch.Tensor  # [rows, 1, width, prefix + width] float32: 0 where attending, -inf elsewhere
    past_keys: torch.Tensor  # [layers, rows, KVH, prefix, D]
    past_values: torch.Tensor
    row_of: list[int]
    in_place: bool
    lengths: list[int]
    store: KVStore | None = None
    first: int = 0


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


def _row_lengths(requests: list[StepRequest], row_of: list[int], rows: int) -> list[int]:
    """The committed cache length of each batch row (0 for rows that are no request's)."""
    lengths = [0] * rows
    for row, request in zip(row_of, requests, strict=True):
        lengths[row] = request.cache.length
    return lengths


def _visible(requests: list[StepRequest], row_of: list[int], shape: StepShape, lengths: list[int]) -> torch.Tensor:
    """Which positions of [past | step] each query attends to, [rows, width, prefix + width] bool, given
    each row's committed `lengths`. Rows and columns that are padding attend to themselves only (no row
    without a key: no NaN)."""
    rows, width, prefix = shape.rows, shape.width, shape.prefix
    allowed = torch.empty(rows, width, prefix + width, dtype=torch.bool)
    allowed[:, :, :prefix] = (torch.arange(prefix) < torch.tensor(lengths)[:, None])[:, None, :]
    if _uniform(requests, shape):  # no padding: the requests' own visibilities, stacked
        allowed[:, :, prefix:] = torch.stack([requests[i].visibility.cpu() for i in _by_row(row_of)])
        return allowed
    allowed[:, :, prefix:] = False
    counts = [0] * rows
    for row, request in zip(row_of, requests, strict=True):
        count = counts[row] = request.token_ids.shape[0]
        allowed[row, :count, prefix : prefix + count] = request.visibility.cpu()
    steps = torch.arange(width)
    padding = steps[None, :] >= torch.tensor(counts)[:, None]  # [rows, width]
    allowed[:, steps, prefix + steps] |= padding
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
    lengths = _row_lengths(requests, row_of, shape.rows)
    bias = torch.where(_visible(requests, row_of, shape, lengths), 0.0, float("-inf")).unsqueeze(1)
    store = None
    if first is not None:
        store = requests[0].cache.store
        window = slice(first, first + shape.rows)
        keys, values = (tensor[window, :, :, : shape.prefix].transpose(0, 1) for tensor in (store.keys, store.values))
    else:
        keys, values = _gathered_past(requests, shape, dtype, device)
    device_inputs = (tensor.to(device) for tensor in (input_ids, positions, bias))
    return StepBatch(*device_inputs, keys, values, row_of, in_place, lengths, store, first or 0)


def _gathered_past(requests: list[StepRequest], shape: StepShape, dtype: torch.dtype, device: torch.device) -> KV:
    """A padded copy of the requests' committed K/V, [layers, rows, KVH, prefix, D] each."""
    store = requests[0].cache.store
    # laid out and viewed as a store's past is (a compiled graph is guarded on its inputs' strides and
    # dispatch keys): [layers, rows, ...] views of [rows, layers, KVH, prefix + 1, D]
    size = (shape.rows, store.layers, store.keys.shape[2], shape.prefix + 1, store.keys.shape[4])
    keys, values = (torch.zeros(size, dtype=dtype, device=device)[..., : shape.prefix, :].transpose(0, 1) for _ in "kv")
    for row, request in enumerate(requests):
        length = request.cache.length
        keys[:, row, :, :length] = request.cache.keys[:, :, :length]
        values[:, row, :, :length] = request.cache.values[:, :, :length]
    return keys, values


class PaddedBatchBackend:
    """A step backend over a network with the ONNX step signature. Subclasses set config, dtype,
    device and has_adapter, and implement `_forward` and `_to_logits`; they may override `_shape` (how a
    step is bucketed) and `_all_logits` (logits of every row, computed with the forward)."""

    config: NLDConfig
    dtype: torch.dtype
    device: torch.device
    has_adapter: bool
    gathered_steps: int = 0  # steps whose past could not be read in place (copied)
    forward_seconds: float = 0.0  # time inside the network forwards; the rest of a step is host work

    def _forward(self, batch: StepBatch, adapter: bool) -> tuple[torch.Tensor, KV | None]:
        """(per-token outputs [B, T, ...], (present keys, present values) [layers, B, KVH, T, D]) of a batch;
        None instead of the presents when the forward wrote every row's new K/V into the store itself."""
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
        began = time.perf_counter()
        outputs, presents = self._forward(batch, adapters.pop())
        self.forward_seconds += time.perf_counter() - began
        logits, index = self._wanted_logits(requests, batch, outputs)
        results: list[StepResult | None] = []
        errors: dict[int, Exception] = {}
        writes: list[tuple[StepRequest, int]] = []
        greedy = self._greedy_selection(requests, logits, index)
        for index, (request, row) in enumerate(zip(requests, batch.row_of, strict=True)):
            try:  # one request's selection or cache room failing must not fail the others
                result = self._result(request, logits[index], greedy.get(index))
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

    def _wanted_logits(
        self, requests: list[StepRequest], batch: StepBatch, outputs: torch.Tensor
    ) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """float32 logits of each request's wanted rows, computed for all requests at once (one head
        product per step, not one per request), and which rows of the flattened batch they are (None: all,
        in order)."""
        width = outputs.shape[1]
        flat = outputs.reshape(-1, *outputs.shape[2:])
        if batch.row_of == list(range(len(requests))) == list(range(outputs.shape[0])) and all(
            request.rows is None and request.token_ids.shape[0] == width for request in requests
        ):  # every row of the batch wanted, in request order: no gather
            return list(self._to_logits(flat).split(width)), None
        picks = []
        for request, row in zip(requests, batch.row_of, strict=True):
            own = torch.arange(request.token_ids.shape[0]) if request.rows is None else request.rows.cpu()
            own = torch.where(own < 0, own + request.token_ids.shape[0], own)  # rows may count from the end
            picks.append(own + row * width)
        index = torch.cat(picks).to(flat.device)
        every = self._to_logits(flat[index])
        return list(every.split([pick.shape[0] for pick in picks])), index

    def _graph_top1(self) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """The last forward's greedy choice for every row of the flattened batch, when the network made it
        (ids, confidence, the one id it excluded); None when it did not."""
        return None

    def _greedy_selection(
        self, requests: list[StepRequest], logits: list[torch.Tensor], index: torch.Tensor | None
    ) -> dict[int, SelectedIds]:
        """The selections of the requests that decode greedily without penalties: the network's own when
        it made them, else made in one call."""
        plain = [i for i, request in enumerate(requests) if _plain_greedy(request)]
        chosen: dict[int, SelectedIds] = {}
        top1 = self._graph_top1()
        if top1 is not None:
            ids, confidence, excluded = top1
            if index is not None:  # only the wanted rows, as `logits` holds them
                ids, confidence = ids[index], confidence[index]
            offsets = torch.tensor([0, *(part.shape[0] for part in logits)]).cumsum(0).tolist()
            for i in plain:
                if requests[i].sampler.banned_ids == (excluded,):
                    chosen[i] = (ids[offsets[i] : offsets[i + 1]], confidence[offsets[i] : offsets[i + 1]])
            plain = [i for i in plain if i not in chosen]
        banned = {requests[i].sampler.banned_ids for i in plain}
        if len(plain) < 2 or len(banned) > 1:
            return chosen
        try:
            ids, confidence = select_tokens(torch.cat([logits[i] for i in plain]), requests[plain[0]].sampler)
        except Exception:  # leave each to its own selection, which fails alone
            return chosen
        sizes = [logits[i].shape[0] for i in plain]
        return chosen | dict(zip(plain, zip(ids.split(sizes), confidence.split(sizes), strict=True), strict=True))

    def _write(self, writes: list[tuple[StepRequest, int]], presents: KV | None) -> None:
        """Write the new tokens' K/V of every (request, batch row) in `writes` after its committed ones
        (`presents` None: the forward wrote them there already; they are committed)."""
        if presents is None:
            for request, _ in writes:
                request.cache.length += request.token_ids.shape[0]
            return
        by_store: dict[int, list[tuple[StepRequest, int]]] = {}
        for request, row in writes:
            by_store.setdefault(id(request.cache.store), []).append((request, row))
        for members in by_store.values():
            store = members[0][0].cache.store
            if len(members) <= FEW_WRITES:  # a copy per request and K/V: cheaper than building index tensors
                for request, row in members:
                    count, start = request.token_ids.shape[0], request.cache.length
                    for tensor, present in zip((store.keys, store.values), presents, strict=True):
                        tensor[request.cache.slot, :, :, start : start + count] = present[:, row, :, :count]
                    request.cache.length += count
                continue
            rows, steps, slots, positions = [], [], [], []
            for request, row in members:
                count = request.token_ids.shape[0]
                rows += [row] * count
                steps += range(count)
                slots += [request.cache.slot] * count
                positions += range(request.cache.length, request.cache.length + count)
            row_index, step_index = torch.tensor(rows, device=self.device), torch.tensor(steps, device=self.device)
            # [layers, rows, KVH, T, D][:, row, :, step] -> [N, layers, KVH, D] (advanced indices go first)
            keys, values = (present[:, row_index, :, step_index] for present in presents)
            store.write(torch.tensor(slots), torch.tensor(positions), keys, values)
            for request, _ in members:
                request.cache.length += request.token_ids.shape[0]

    def _result(self, request: StepRequest, logits: torch.Tensor, selected: SelectedIds | None) -> StepResult:
        """Select the tokens of one request's wanted rows (`selected`: already chosen greedily)."""
        if selected is None:
            scored = logits if request.penalties is None else apply_penalties(logits, request.penalties)
            selected = select_tokens(scored, request.sampler)
        ids, confidence = selected
        logprobs = None
        if request.logprobs is not None:
            banned = request.sampler.banned_ids
            logprobs = row_logprobs(logits, ids, banned, request.logprobs, request.logprob_rows).cpu()
        # Results live on the host: policies are device-agnostic and read a few ids per token.
        return StepResult(ids.cpu(), confidence.cpu(), logits.cpu() if request.return_logits else None, logprobs)


def _plain_greedy(request: StepRequest) -> bool:
    """Whether a request's selection is the argmax of its logits alone (no penalties, no sampling)."""
    return request.penalties is None and request.sampler.greedy and len(request.sampler.banned_ids) <= 1
