"""Rotary position embeddings (default and YaRN) and the Llama-4 query scaling, from RopeConfig."""

from __future__ import annotations

import math

import torch

from nld.config import RopeConfig


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_attention_factor(rope: RopeConfig) -> float:
    if rope.attention_factor is not None:
        return rope.attention_factor
    if rope.mscale and rope.mscale_all_dim:
        return _yarn_mscale(rope.factor, rope.mscale) / _yarn_mscale(rope.factor, rope.mscale_all_dim)
    return _yarn_mscale(rope.factor)


def _yarn_inv_freq(rope: RopeConfig, dim: int) -> torch.Tensor:
    """YaRN: interpolate low frequencies by `factor`, keep high ones, ramp linearly between."""
    assert rope.original_max_position_embeddings is not None
    base, original = rope.theta, rope.original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolated = 1.0 / pos_freqs
    interpolated = 1.0 / (rope.factor * pos_freqs)
    return interpolated * (1 - extrapolation_weight) + extrapolated * extrapolation_weight


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> tuple[torch.Tensor, float]:
    """Return (inv_freq [head_dim/2] float32, attention factor applied to cos/sin)."""
    if rope.rope_type == "yarn":
        return _yarn_inv_freq(rope, head_dim), _yarn_attention_factor(rope)
    return 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)), 1.0


class RotaryEmbedding(torch.nn.Module):
    """cos/sin tables computed on the fly for arbitrary (non-contiguous) positions."""

    def __init__(self, rope: RopeConfig, head_dim: int) -> None:
        super().__init__()
        inv_freq, self.attention_factor = inverse_frequencies(rope, head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.llama4_beta = rope.llama_4_scaling_beta
        self.llama4_original = rope.original_max_position_embeddings

    def forward(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [B, T] int64 -> (cos, sin) [B, 1, T, head_dim] in `dtype`."""
        freqs = positions.float().unsqueeze(-1) * self.inv_freq.to(positions.device)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = (emb.cos() * self.attention_factor).to(dtype)
        sin = (emb.sin() * self.attention_factor).to(dtype)
        return cos.unsqueeze(1), sin.unsqueeze(1)

    def query_scale(self, positions: torch.Tensor) -> torch.Tensor | None:
        """Llama-4 scaling 1 + beta*log(1 + floor(pos / original_max)) as [B, 1, T, 1], or None."""
        if self.llama4_beta is None:
            return None
        assert self.llama4_original is not None
        scale = 1 + self.llama4_beta * torch.log1p(torch.floor(positions.float() / self.llama4_original))
        return scale[:, None, :, None]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by (cos, sin) [B, 1, T, D]."""
    return x * cos + _rotate_half(x) * sin
