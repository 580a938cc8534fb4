"""Optimization profiles of the step network, derived from the build plan.

Two profiles, as LLM engines use them:
- `decode`: the steps of the requested modes (1 token for AR, B for diffusion and linear-spec,
  B*(B+1) for quadratic-spec, which span 1, B, B and 2B positions) for up to `max_batch` requests,
  against a cache of committed tokens that leaves room for the step's span in `context`;
  tuned at the widest requested step for a full batch halfway through the context.
- `prefill`: one prompt of up to `max_prefill` tokens (at most the context) at a time, from an empty or
  short cache; tuned for a prompt of a quarter of that length.

Shapes follow the ONNX step signature (`nld.onnx_export`): input_ids/position_ids [B,T],
attention_bias [B,1,T,P+T], past_key_values.{i}.key|value [B,KVH,P,D].
"""

from __future__ import annotations

from dataclasses import dataclass

from nld.builder.plan import step_positions as plan_step_positions
from nld.config import NLDConfig
from nld.errors import NLDError
from nld.onnx_export import io_names

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ShapeRange:
    min: Shape
    opt: Shape
    max: Shape


@dataclass(frozen=True)
class EngineProfile:
    name: str
    shapes: dict[str, ShapeRange]

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "shapes": {k: [list(r.min), list(r.opt), list(r.max)] for k, r in self.shapes.items()},
        }


@dataclass(frozen=True)
class _Extent:
    """min/opt/max of one dimension."""

    low: int
    opt: int
    high: int


def _profile(name: str, config: NLDConfig, batch: _Extent, steps: _Extent, past: _Extent) -> EngineProfile:
    kv_heads, head_dim = config.num_key_value_heads, config.head_dim

    def shape(pick: str) -> dict[str, Shape]:
        b, t, p = getattr(batch, pick), getattr(steps, pick), getattr(past, pick)
        return {"tokens": (b, t), "bias": (b, 1, t, p + t), "kv": (b, kv_heads, p, head_dim)}

    low, opt, high = shape("low"), shape("opt"), shape("high")
    inputs, _ = io_names(config.num_hidden_layers)
    kind = {"input_ids": "tokens", "position_ids": "tokens", "attention_bias": "bias"}
    shapes = {
        name_: ShapeRange(low[kind.get(name_, "kv")], opt[kind.get(name_, "kv")], high[kind.get(name_, "kv")])
        for name_ in inputs
    }
    return EngineProfile(name, shapes)


def engine_profiles(
    config: NLDConfig,
    step_tokens: dict[str, int],
    context: int,
    max_batch: int,
    modes: tuple[str, ...],
    max_prefill: int = 1024,
    step_positions: dict[str, int] | None = None,
) -> list[EngineProfile]:
    """The decode and prefill profiles for `modes` (keys of `step_tokens`, e.g. a build plan's).

    A step's width (tokens: input_ids / attention_bias rows) and its span (positions it occupies) differ
    for quadratic-spec: B(B+1) tokens at 2B positions. The span must fit the context behind the committed
    tokens; the past input holds committed tokens only (a step's extra K/V are dropped, never fed back), so
    the past reaches context - span of the narrowest requested step, and the bias P+T may exceed the context.
    `step_positions` defaults to the plan's (`nld.builder.plan.step_positions`)."""
    unknown = [mode for mode in modes if mode not in step_tokens]
    if unknown or not modes:
        raise NLDError(f"unknown modes {unknown or modes}: choose from {', '.join(step_tokens)}")
    spans = step_positions if step_positions is not None else plan_step_positions(config)
    for mode in modes:
        if spans[mode] >= context:  # at least one committed (prompt) token precedes the step
            raise NLDError(
                f"a {mode} step of {step_tokens[mode]} tokens spans {spans[mode]} positions and does not fit a "
                f"context of {context} tokens (--max-context)"
            )
    widest = max(step_tokens[mode] for mode in modes)
    longest_past = context - min(spans[mode] for mode in modes)
    prefill = min(max_prefill, context)
    decode = _profile(
        "decode",
        config,
        _Extent(1, max_batch, max_batch),
        _Extent(1, widest, widest),
        _Extent(0, min(context // 2, longest_past), longest_past),
    )
    prompt = _profile(
        "prefill",
        config,
        _Extent(1, 1, max_batch),
        _Extent(1, max(1, prefill // 4), prefill),
        _Extent(0, 0, context - prefill),
    )
    return [decode, prompt]


def trtexec_shape_flags(profiles: list[EngineProfile]) -> str:
    """trtexec's --minShapes/--optShapes/--maxShapes, one set per profile in order."""

    def spec(profile: EngineProfile, pick: str) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, getattr(r, pick)))}" for name, r in profile.shapes.items())

    flags = []
    for profile in profiles:
        flags += [f"--minShapes={spec(profile, 'min')}", f"--optShapes={spec(profile, 'opt')}"]
        flags += [f"--maxShapes={spec(profile, 'max')}"]
    return " ".join(flags)
