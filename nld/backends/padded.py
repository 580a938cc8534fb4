"""What batching backends share: padding the steps of many requests into one forward, batching their
KV caches, and turning per-token outputs into selected ids. Subclasses run the forward itself."""

from __future__ import annotations

import torch

from nld.config import NLDConfig
from nld.kv_cache import KV, KVCache
from nld.penalties import apply_penalties
from nld.sampling import row_logprobs, select_tokens
from nld.step import PartialStepError, StepRequest, StepResult, additive_bias


def attention_bias(requests: list[StepRequest], prefix: int, steps: int, device: torch.device) -> torch.Tensor:
    """Additive bias [B, 1, steps, prefix + steps]: 0 where attending, -inf elsewhere (padding included)."""
    allowed = torch.zeros(len(requests), steps, prefix + steps, dtype=torch.bool)
    for row, request in enumerate(requests):
        count = request.token_ids.shape[0]
        allowed[row, :, : request.cache.length] = True
        allowed[row, :count, prefix : prefix + count] = request.visibility.cpu()
        padding = torch.arange(count, steps)
        allowed[row, padding, prefix + padding] = True  # padded queries see themselves only (no NaN rows)
    return additive_bias(allowed).unsqueeze(1).to(device)


class PaddedBatchBackend:
    """A step backend over a network with the ONNX step signature. Subclasses set config, dtype,
    device and has_adapter, and implement `_forward` and `_to_logits`."""

    config: NLDConfig
    dtype: torch.dtype
    device: torch.device
    has_adapter: bool

    def _forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, bias: torch.Tensor, past: list[KV], adapter: bool
    ) -> tuple[torch.Tensor, list[KV]]:
        """(per-token outputs [B, T, ...], presents per layer [B, KVH, T, D])."""
        raise NotImplementedError

    def _to_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """float32 logits of some rows of `_forward`'s outputs."""
        raise NotImplementedError

    def new_cache(self, capacity: int) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, capacity, self.dtype, self.device)

    def _batched_past(self, requests: list[StepRequest], prefix: int) -> list[KV]:
        if len(requests) == 1:
            cache = requests[0].cache
            return [tuple(t.unsqueeze(0) for t in cache.layer(i)) for i in range(self.config.num_hidden_layers)]  # type: ignore[misc]
        past = []
        for layer in range(self.config.num_hidden_layers):
            shape = (len(requests), self.config.num_key_value_heads, prefix, self.config.head_dim)
            keys = torch.zeros(shape, dtype=self.dtype, device=self.device)
            values = torch.zeros_like(keys)
            for row, request in enumerate(requests):
                key, value = request.cache.layer(layer)
                keys[row, :, : key.shape[1]] = key
                values[row, :, : value.shape[1]] = value
            past.append((keys, values))
        return past

    def step(self, requests: list[StepRequest]) -> list[StepResult]:
        """Run one forward over all requests (padded into one batch) and select tokens per request."""
        adapters = {request.adapter for request in requests}
        if len(adapters) > 1:
            raise ValueError("one step cannot mix adapter-on and adapter-off requests")
        prefix = max(request.cache.length for request in requests)
        steps = max(request.token_ids.shape[0] for request in requests)
        input_ids = torch.zeros(len(requests), steps, dtype=torch.long, device=self.device)
        positions = torch.zeros_like(input_ids)
        for row, request in enumerate(requests):
            count = request.token_ids.shape[0]
            input_ids[row, :count] = request.token_ids.to(self.device)
            positions[row, :count] = request.positions.to(self.device)
        bias = attention_bias(requests, prefix, steps, self.device)
        outputs, presents = self._forward(
            input_ids, positions, bias, self._batched_past(requests, prefix), adapters.pop()
        )
        results: list[StepResult | None] = []
        errors: dict[int, Exception] = {}
        for row, request in enumerate(requests):
            try:  # one request's selection or cache write failing must not fail the others
                results.append(self._result(request, row, outputs, presents))
            except Exception as error:
                results.append(None)
                errors[row] = error
        if errors:
            raise PartialStepError(results, errors)
        return results  # type: ignore[return-value]

    def _result(self, request: StepRequest, row: int, outputs: torch.Tensor, presents: list[KV]) -> StepResult:
        """Select the tokens of one request's rows of a batched forward, and write its cache if asked."""
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
        if request.write_cache:
            request.cache.append([(k[row, :, :count], v[row, :, :count]) for k, v in presents])
        # Results live on the host: policies are device-agnostic and read a few ids per token.
        return StepResult(ids.cpu(), confidence.cpu(), logits.cpu() if request.return_logits else None, logprobs)
