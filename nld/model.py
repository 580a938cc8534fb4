"""The NLD network in PyTorch: Ministral-3 backbone + untied diffusion head, as a pure step function.

`NLDTransformer.forward` has the signature of the exported step network: token ids, positions, an
additive attention bias over [cached prefix | step tokens], and the past K/V per layer in; hidden
states and the step's own K/V per layer out. Which tokens attend to which (causal, bidirectional
within a group, padding) lives entirely in the bias, so one network serves every decoding mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nld.checkpoint import Checkpoint, LoraAdapter
from nld.config import NLDConfig
from nld.rope import RotaryEmbedding, apply_rotary

KV = tuple[torch.Tensor, torch.Tensor]
# attention(layer index, q [B, H, T, D], k [B, KVH, T, D], v [B, KVH, T, D]) -> [B, H, T, D]
LayerAttention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def fuse_linears(*linears: nn.Linear) -> torch.Tensor:
    """One weight matrix stacking the linears' weights; each linear's weight becomes a view of its rows,
    so the model holds the weights once and its state dict is unchanged."""
    fused = torch.cat([linear.weight.detach() for linear in linears])
    start = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight = nn.Parameter(fused[start : start + rows], requires_grad=False)
        start += rows
    return fused


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in float32, as Ministral-3 does."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # the same arithmetic, one kernel
            return F.rms_norm(x, (x.shape[-1],), self.weight, eps=self.eps)
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps)  # x * rsqrt(mean(x^2) + eps) in float32
        return self.weight * normed.to(x.dtype)


def split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past: KV, bias: torch.Tensor) -> torch.Tensor:
    """Attention over [past | new] that reads the past K/V where they lie (any strides: views of a KV
    store) instead of concatenating them with the new ones: the scores of both parts are joined, the
    weights split again. q [B, H, T, D]; k, v [B, KVH, T, D]; past [B, KVH, P, D]; bias [B, 1, T, P+T].
    Grouped-query heads share their K/V without being repeated. Returns [B, H, T, D]."""
    batch, heads, steps, dim = q.shape
    kv_heads, prefix = k.shape[1], past[0].shape[2]
    grouped = q.reshape(batch, kv_heads, heads // kv_heads * steps, dim)  # heads are kv-head-major
    scores = torch.cat((grouped @ past[0].transpose(-1, -2), grouped @ k.transpose(-1, -2)), dim=-1)
    scores = scores.view(batch, kv_heads, heads // kv_heads, steps, prefix + steps).float() * dim**-0.5
    weights = torch.softmax(scores + bias.float().unsqueeze(1), dim=-1).to(v.dtype)
    weights = weights.view(batch, kv_heads, heads // kv_heads * steps, prefix + steps)
    out = weights[..., :prefix] @ past[1] + weights[..., prefix:] @ v
    return out.view(batch, heads, steps, dim)


class Attention(nn.Module):
    def __init__(self, config: NLDConfig) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)
        self.lora_a: torch.Tensor | None = None
        self.lora_b: torch.Tensor | None = None
        self.lora_scaling = 0.0
        self.qkv: torch.Tensor | None = None  # q/k/v weights as one matrix, once fused (fuse_projections)

    def fuse(self) -> None:
        """Compute q, k and v with one matrix product: their weights become views of one [q; k; v] matrix."""
        self.qkv = fuse_linears(self.q_proj, self.k_proj, self.v_proj)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v of `x` [B, T, hidden], each [B, T, heads x D]."""
        if self.qkv is None:
            return self.q_proj(x), self.k_proj(x), self.v_proj(x)
        kv_width = self.kv_heads * self.head_dim
        q, k, v = F.linear(x, self.qkv).split((self.heads * self.head_dim, kv_width, kv_width), dim=-1)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        rotary: tuple[torch.Tensor, torch.Tensor],
        query_scale: torch.Tensor | None,
        bias: torch.Tensor,
        past: KV | None,
        adapter: bool,
        split: bool = False,
        attend: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, KV]:
        batch, steps, _ = x.shape
        q, k, v = self.project(x)
        q = q.reshape(batch, steps, self.heads, self.head_dim).transpose(1, 2)
        k = k.reshape(batch, steps, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.reshape(batch, steps, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = rotary
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if query_scale is not None:
            q = q * query_scale.to(q.dtype)
        if attend is not None:  # an attention of the caller's (the in-place ONNX graph's)
            out = attend(q, k, v)
        elif split and past is not None:
            out = split_attention(q, k, v, past, bias)
        else:
            keys, values = (k, v) if past is None else (torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2))
            out = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias.to(q.dtype), enable_gqa=True)
        out = out.transpose(1, 2).reshape(batch, steps, self.heads * self.head_dim)
        result = self.o_proj(out)
        if adapter and self.lora_a is not None and self.lora_b is not None:
            result = result + F.linear(F.linear(out, self.lora_a), self.lora_b) * self.lora_scaling
        return result, (k, v)


class MLP(nn.Module):
    def __init__(self, config: NLDConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.gate_up: torch.Tensor | None = None  # gate and up weights as one matrix, once fused

    def fuse(self) -> None:
        """Compute gate and up with one matrix product (their weights become views of one matrix)."""
        self.gate_up = fuse_linears(self.gate_proj, self.up_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = F.linear(x, self.gate_up).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, config: NLDConfig) -> None:
        super().__init__()
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Encoder(nn.Module):
    def __init__(self, config: NLDConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class NLDTransformer(nn.Module):
    """Backbone (`encoder`) + `diffusion_head`, parameter names as in the released checkpoints."""

    def __init__(self, config: NLDConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.diffusion_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(config.rope, config.head_dim)
        self.has_adapter = False

    @classmethod
    def from_checkpoint(
        cls, checkpoint: Checkpoint, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> NLDTransformer:
        """Build the network on `device` in `dtype` from loaded (validated) checkpoint tensors."""
        with torch.device("meta"):
            model = cls(checkpoint.config)
        weights = dict(checkpoint.weights)
        if checkpoint.config.tie_word_embeddings:
            weights["diffusion_head.weight"] = weights["encoder.embed_tokens.weight"]
        model.load_state_dict({k: v.to(dtype) for k, v in weights.items()}, strict=True, assign=True)
        model.rotary = RotaryEmbedding(checkpoint.config.rope, checkpoint.config.head_dim)
        model = model.to(device=device)
        if checkpoint.adapter is not None:
            model.attach_adapter(checkpoint.adapter)
        return model.eval()

    def fuse_projections(self) -> None:
        """Fuse q/k/v and gate/up into one matrix product each (runtime only: ModelOpt and the exported
        graph see the separate projections of a model that was not fused)."""
        for layer in self.encoder.layers:
            layer.self_attn.fuse()
            layer.mlp.fuse()

    def attach_adapter(self, adapter: LoraAdapter) -> None:
        """Install the o_proj LoRA; it is applied only in forwards called with `adapter=True`."""
        weight = self.encoder.embed_tokens.weight
        for index, layer in enumerate(self.encoder.layers):
            lora_a, lora_b = adapter.layers[index]
            layer.self_attn.lora_a = lora_a.to(device=weight.device, dtype=weight.dtype)
            layer.self_attn.lora_b = lora_b.to(device=weight.device, dtype=weight.dtype)
            layer.self_attn.lora_scaling = adapter.scaling
        self.has_adapter = True

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        past: list[KV] | None = None,
        adapter: bool = False,
        split_attention: bool = False,
        attention: LayerAttention | None = None,
    ) -> tuple[torch.Tensor, list[KV]]:
        """One step. input_ids/position_ids [B, T]; attention_bias [B, 1, T, P+T] (0 or -inf);
        past: per layer (key, value) [B, KVH, P, D] post-RoPE, read in place with `split_attention`
        (concatenated with the new K/V otherwise: the exported graph's form, which TensorRT fuses);
        `attention`, when given, computes every layer's attention instead.
        Returns (hidden [B, T, H], presents)."""
        hidden = self.encoder.embed_tokens(input_ids)
        rotary = self.rotary(position_ids, hidden.dtype)
        query_scale = self.rotary.query_scale(position_ids)
        presents: list[KV] = []
        for index, layer in enumerate(self.encoder.layers):
            attend = None if attention is None else functools.partial(attention, index)
            attn_out, present = layer.self_attn(
                layer.input_layernorm(hidden),
                rotary,
                query_scale,
                attention_bias,
                None if past is None else past[index],
                adapter,
                split_attention,
                attend,
            )
            presents.append(present)
            hidden = hidden + attn_out
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return self.encoder.norm(hidden), presents

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Diffusion head over final hidden states; one head serves causal and bidirectional passes."""
        return self.diffusion_head(hidden)
