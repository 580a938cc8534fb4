"""The reference step backend: runs NLDTransformer in PyTorch on CPU or CUDA."""

from __future__ import annotations

import torch

from nld.checkpoint import Checkpoint
from nld.config import NLDConfig
from nld.errors import NLDError
from nld.kv_cache import KVCache
from nld.model import KV, NLDTransformer
from nld.sampling import select_tokens
from nld.step import StepRequest, StepResult

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """Map a dtype name (float32 | bfloat16 | float16, or fp32/bf16/fp16) to torch."""
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype '{name}': choose one of {', '.join(DTYPES)} (or fp32, bf16, fp16)")
    return DTYPES[key]


def attention_bias(requests: list[StepRequest], prefix: int, steps: int, device: torch.device) -> torch.Tensor:
    """Additive bias [B, 1, steps, prefix + steps]: 0 where attending, -inf elsewhere (padding included)."""
    allowed = torch.zeros(len(requests), steps, prefix + steps, dtype=torch.bool)
    for row, request in enumerate(requests):
        count = request.token_ids.shape[0]
        allowed[row, :, : request.cache.length] = True
        allowed[row, :count, prefix : prefix + count] = request.visibility.cpu()
        padding = torch.arange(count, steps)
        allowed[row, padding, prefix + padding] = True  # padded queries see themselves only (no NaN rows)
    bias = torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, float("-inf"))
    return bias.unsqueeze(1).to(device)


class TorchBackend:
    """Step backend over the PyTorch reference model."""

    name = "torch"

    def __init__(self, model: NLDTransformer) -> None:
        self.model = model
        self.config: NLDConfig = model.config
        self.device = model.encoder.embed_tokens.weight.device
        self.dtype = model.encoder.embed_tokens.weight.dtype
        self.has_adapter = model.has_adapter

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, dtype: str = "float32", device: str = "cpu") -> TorchBackend:
        """Build the reference model from a loaded checkpoint on `device` (cpu, cuda, cuda:N) in `dtype`."""
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise NLDError(f"device '{device}' requested but this torch build sees no CUDA device")
        return cls(NLDTransformer.from_checkpoint(checkpoint, resolve_dtype(dtype), device))

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

    @torch.inference_mode()
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
        hidden, presents = self.model(input_ids, positions, bias, self._batched_past(requests, prefix), adapters.pop())
        results = []
        for row, request in enumerate(requests):
            count = request.token_ids.shape[0]
            own = hidden[row, :count]  # rows index the request's own tokens, not the padded batch
            wanted = own if request.rows is None else own[request.rows.to(self.device)]
            logits = self.model.logits(wanted).float()
            ids, confidence = select_tokens(logits, request.sampler)
            if request.write_cache:
                request.cache.append([(k[row, :, :count], v[row, :, :count]) for k, v in presents])
            # Results live on the host: policies are device-agnostic and read a few ids per token.
            results.append(StepResult(ids.cpu(), confidence.cpu(), logits.cpu() if request.return_logits else None))
        return results
