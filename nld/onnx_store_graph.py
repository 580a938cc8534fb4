"""The in-place step graph: the step network over whole KV-store buffers, for onnxruntime's I/O binding.

The plain step graph (onnx_export.py) takes each layer's past as a tensor of exactly the committed
length, so a runtime that needs contiguous inputs gets a copy of every cache on every step. This graph
takes, per layer, the whole buffer [B, KVH, capacity, D] of a layer-major KV store's window
(nld/kv_cache.py `layer_blocks`) and computes attention with onnxruntime's GroupQueryAttention
(com.microsoft), which reads each row's first `seqlens_k + 1` positions of the buffer and writes the
step's new K/V at the end of them; the backend binds each `present_cache.*` output to the very buffer of
its `cache.*` input, so the past is read and the new K/V written where they lie.

Inputs `input_ids` [B,T] int64, `position_ids` [B,T] int64, `seqlens_k` [B] int32 (committed length +
T - 1 per row), `total_sequence_length` [] int32 (the longest committed length + T), `cache.{i}.key|value`
[B,KVH,capacity,D]; outputs `logits` [B,T,V] and `present_cache.{i}.key|value` (the same buffers).
What the operator can do bounds where the graph serves: its attention is causal (a query sees the past
and the step's earlier tokens: AR steps, prefills and verifications, not diffusion drafts), and with a
past it takes a batch of one row or steps of one token (onnxruntime 1.32's CPU kernel).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from onnx.defs import OpSchema

from nld.model import NLDTransformer
from nld.onnx_export import StepNetwork, export_network, io_names

DOMAIN = "com.microsoft"

_LIBRARY = torch.library.Library("nld", "FRAGMENT")
_LIBRARY.define(
    "store_attention(Tensor q, Tensor k, Tensor v, Tensor past_key, Tensor past_value, Tensor seqlens_k, "
    "Tensor total_sequence_length, int num_heads, int kv_heads) -> (Tensor, Tensor, Tensor)"
)


def store_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    past_key: torch.Tensor,
    past_value: torch.Tensor,
    seqlens_k: torch.Tensor,
    total_sequence_length: torch.Tensor,
    num_heads: int,
    kv_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What GroupQueryAttention computes over shared buffers: q [B,T,H*D], k/v [B,T,KVH*D], buffers
    [B,KVH,capacity,D]; row b's new K/V go to positions [seqlens_k[b] + 1 - T, seqlens_k[b] + 1), which
    its queries attend causally. Returns (output [B,T,H*D], the written buffers)."""
    batch, steps, _ = q.shape
    dim = q.shape[-1] // num_heads
    keys, values = past_key.clone(), past_value.clone()
    out = torch.empty_like(q)
    for row in range(batch):
        end = int(seqlens_k[row]) + 1
        start = end - steps
        keys[row, :, start:end] = k[row].view(steps, kv_heads, dim).transpose(0, 1)
        values[row, :, start:end] = v[row].view(steps, kv_heads, dim).transpose(0, 1)
        visible = torch.ones(steps, end, dtype=torch.bool)
        visible[:, start:] = torch.ones(steps, steps, dtype=torch.bool).tril()
        query = q[row].view(steps, num_heads, dim).transpose(0, 1)[None]
        attended = torch.nn.functional.scaled_dot_product_attention(
            query, keys[row : row + 1, :, :end], values[row : row + 1, :, :end], attn_mask=visible, enable_gqa=True
        )
        out[row] = attended[0].transpose(0, 1).reshape(steps, num_heads * dim)
    return out, keys, values


_LIBRARY.impl("store_attention", store_attention_reference, "CPU")


@torch.library.register_fake("nld::store_attention")
def _store_attention_shapes(*args: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, past_key, past_value = args[0], args[3], args[4]
    assert isinstance(q, torch.Tensor) and isinstance(past_key, torch.Tensor) and isinstance(past_value, torch.Tensor)
    return torch.empty_like(q), torch.empty_like(past_key), torch.empty_like(past_value)


def _register_schema() -> None:
    """Tell onnx (which the exporter asks) what com.microsoft's GroupQueryAttention looks like: the
    inputs and attributes this graph uses."""
    if onnx.defs.has("GroupQueryAttention", DOMAIN):
        return
    parameter, attribute = OpSchema.FormalParameter, OpSchema.Attribute
    names = ("query", "key", "value", "past_key", "past_value")
    onnx.defs.register_schema(
        OpSchema(
            "GroupQueryAttention",
            DOMAIN,
            1,
            inputs=[parameter(name, "T") for name in names]
            + [parameter("seqlens_k", "M"), parameter("total_sequence_length", "M")],
            outputs=[parameter(name, "T") for name in ("output", "present_key", "present_value")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], ""), ("M", ["tensor(int32)"], "")],
            attributes=[attribute(name, OpSchema.AttrType.INT, "") for name in ("num_heads", "kv_num_heads")],
        )
    )


def _group_query_attention(  # the exporter reads the parameters: tensors unannotated, attributes int
    q,
    k,
    v,
    past_key,
    past_value,
    seqlens_k,
    total_sequence_length,
    num_heads: int,
    kv_heads: int,
):
    """com.microsoft GroupQueryAttention over shared past/present buffers (onnxscript, for the exporter)."""
    import onnxscript

    microsoft = onnxscript.values.Opset(DOMAIN, 1)
    return microsoft.GroupQueryAttention(
        q, k, v, past_key, past_value, seqlens_k, total_sequence_length, num_heads=num_heads, kv_num_heads=kv_heads
    )


def store_io_names(layers: int) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of the in-place graph."""
    return io_names(layers, ("seqlens_k", "total_sequence_length"), "cache", "present_cache")


class StoreStepNetwork(StepNetwork):
    """NLDTransformer over whole KV buffers; `adapter` bakes the draft LoRA on or off."""

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        seqlens_k: torch.Tensor,
        total_sequence_length: torch.Tensor,
        *buffers: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        config = self.model.config
        written: list[torch.Tensor] = []

        def attention(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            batch, heads, steps, dim = q.shape
            out, keys, values = torch.ops.nld.store_attention(
                q.transpose(1, 2).reshape(batch, steps, heads * dim),
                k.transpose(1, 2).reshape(batch, steps, -1),
                v.transpose(1, 2).reshape(batch, steps, -1),
                buffers[2 * index],
                buffers[2 * index + 1],
                seqlens_k,
                total_sequence_length,
                config.num_attention_heads,
                config.num_key_value_heads,
            )
            written.extend((keys, values))
            return out.view(batch, steps, heads, dim).transpose(1, 2)

        unused_bias = torch.empty(0, dtype=self.model.encoder.embed_tokens.weight.dtype)
        hidden, _ = self.model(input_ids, position_ids, unused_bias, None, self.adapter, attention=attention)
        return (self.model.logits(hidden), *written)


def export_store_step_onnx(model: NLDTransformer, path: str | Path, adapter: bool = False) -> Path:
    """Write the in-place step graph of `model` (in its dtype) to `path` (weights beside it), atomically."""
    _register_schema()
    config = model.config
    layers, kv_heads, head_dim = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    dtype = model.encoder.embed_tokens.weight.dtype
    batch, steps, capacity = 2, 1, 8
    example = (
        torch.zeros(batch, steps, dtype=torch.long),
        torch.full((batch, steps), 4),
        torch.full((batch,), 4, dtype=torch.int32),
        torch.tensor(5, dtype=torch.int32),
        *[torch.zeros(batch, kv_heads, capacity, head_dim, dtype=dtype) for _ in range(2 * layers)],
    )
    b, t, c = torch.export.Dim("batch"), torch.export.Dim("steps"), torch.export.Dim("capacity")
    shapes = ({0: b, 1: t}, {0: b, 1: t}, {0: b}, None, tuple({0: b, 2: c} for _ in range(2 * layers)))
    translations = {torch.ops.nld.store_attention.default: _group_query_attention}
    network = StoreStepNetwork(model, adapter)
    return export_network(network, example, shapes, store_io_names(layers), path, translations=translations)
