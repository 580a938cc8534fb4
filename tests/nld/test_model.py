"""The two attention forms of the backbone agree: split attention over a past read where it lies in a KV
store (what compiled steps run) and past + new K/V joined for one SDPA call (what eager steps run)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nld.model import split_attention

HEADS, KV_HEADS, DIM = 8, 2, 16


def _joined(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past, bias: torch.Tensor) -> torch.Tensor:
    keys, values = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=bias, enable_gqa=True)


@pytest.mark.parametrize(("rows", "steps", "prefix"), [(1, 1, 5), (3, 4, 7), (2, 9, 0)])
def test_split_attention_equals_joined_sdpa_on_store_views(rows: int, steps: int, prefix: int) -> None:
    generator = torch.Generator().manual_seed(rows * 100 + steps)
    store = torch.randn(rows + 2, 3, KV_HEADS, prefix + 6, DIM, generator=generator)  # [slots, layers, ...]
    values_store = torch.randn(store.shape, generator=generator)
    past = (store[1 : 1 + rows, 2, :, :prefix], values_store[1 : 1 + rows, 2, :, :prefix])  # strided views
    assert not past[0].is_contiguous() or prefix == 0
    q = torch.randn(rows, HEADS, steps, DIM, generator=generator)
    k, v = (torch.randn(rows, KV_HEADS, steps, DIM, generator=generator) for _ in "kv")
    visible = torch.rand(rows, 1, steps, prefix + steps, generator=generator) < 0.6
    visible[..., torch.arange(steps), prefix + torch.arange(steps)] = True  # every query sees itself
    bias = torch.where(visible, 0.0, float("-inf"))
    expected = _joined(q, k, v, past, bias)
    assert torch.allclose(split_attention(q, k, v, past, bias), expected, atol=1e-5, rtol=1e-5)
