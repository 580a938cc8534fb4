"""Build plans: what a model costs on a SKU at a precision, and a memory-bandwidth roofline per mode.

Assumptions (also in docs/build.md):
- Quantized precisions apply to the decoder blocks' linear layers (q/k/v/o, gate/up/down); embeddings,
  norms and the output head stay 16-bit, as ModelOpt's default recipes leave them.
- Bytes per weight: bf16/fp16 2; fp8 1; int4-awq 0.5 + a 16-bit scale per 128 weights; nvfp4 0.5 + an
  fp8 scale per 16 weights. KV cache: fp8 (1 byte) with fp8 and nvfp4, 16-bit otherwise.
- Roofline, one user: a forward reads every weight once and the KV cache of `context` tokens, so
  seconds per forward = (weight bytes + KV bytes per token x context) / bandwidth, and
  tokens/s = tokens per forward / seconds per forward. Compute is ignored: it is an upper bound that
  holds while decoding is memory-bound (quadratic self-speculation's B*(B+1)-token steps are the
  first to leave that regime).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from nld.builder.skus import Sku, check_precision
from nld.config import NLDConfig
from nld.modes.quadratic_spec import default_block

LINEAR_BYTES_PER_WEIGHT = {
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int4-awq": 0.5 + 2 / 128,
    "nvfp4": 0.5 + 1 / 16,
}
# The KV cache is 16-bit at every precision unless the build quantizes it (`--kv-cache fp8`).
KV_BYTES_PER_ELEMENT = {None: 2, "fp8": 1}
# Tokens per forward of NLD-8B-Instruct in the report (10-task average); replace with measured values.
PUBLISHED_TOKENS_PER_FORWARD = {"ar": 1.0, "diffusion": 2.57, "linear-spec": 5.99, "quadratic-spec": 6.38}


def step_tokens(config: NLDConfig) -> dict[str, int]:
    """Tokens in one decode forward of each mode at the model's block size."""
    block = config.block_size
    quadratic = default_block(block)
    return {"ar": 1, "diffusion": block, "linear-spec": block, "quadratic-spec": quadratic * (quadratic + 1)}


def step_positions(config: NLDConfig) -> dict[str, int]:
    """Positions one decode forward of each mode spans: a quadratic step's B*(B+1) tokens sit at 2B
    positions (row i = [d_i, MASK x B] at L+i .. L+i+B; nld/modes/quadratic_spec.py)."""
    block = config.block_size
    return {"ar": 1, "diffusion": block, "linear-spec": block, "quadratic-spec": 2 * default_block(block)}


@dataclass(frozen=True)
class ParameterCounts:
    linear: int  # decoder-block linear weights (quantized)
    other: int  # embeddings, head, norms (kept 16-bit)

    @classmethod
    def of(cls, config: NLDConfig) -> ParameterCounts:
        hidden, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
        attention = hidden * config.head_dim * (2 * heads + 2 * kv)
        mlp = 3 * hidden * config.intermediate_size
        linear = config.num_hidden_layers * (attention + mlp)
        head = 0 if config.tie_word_embeddings else config.vocab_size * hidden
        other = config.vocab_size * hidden + head + (2 * config.num_hidden_layers + 1) * hidden
        return cls(linear, other)


@dataclass
class BuildPlan:
    target: str
    precision: str
    parameters: int
    weight_bytes: int
    kv_bytes_per_token: int
    memory_fraction: float
    context: int
    max_kv_tokens: int | None
    max_batch_at_context: int | None
    step_tokens: dict[str, int]
    tokens_per_forward: dict[str, float]
    roofline_tokens_per_second: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    step_positions: dict[str, int] = field(default_factory=dict)  # positions each mode's step spans

    def as_dict(self) -> dict:
        return asdict(self)


def make_plan(
    config: NLDConfig,
    sku: Sku,
    precision: str,
    context: int | None = None,
    memory_fraction: float = 0.9,
    tokens_per_forward: dict[str, float] | None = None,
    kv_cache: str | None = None,
) -> BuildPlan:
    """The plan for `config` on `sku` at `precision` (raises for a precision the SKU cannot run), with
    a 16-bit KV cache or the quantized `kv_cache` ("fp8") the build writes."""
    check_precision(sku, precision)
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must lie in (0, 1], got {memory_fraction}")
    context = context or config.max_position_embeddings
    counts = ParameterCounts.of(config)
    weight_bytes = round(counts.linear * LINEAR_BYTES_PER_WEIGHT[precision] + counts.other * 2)
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim
    kv_per_token *= KV_BYTES_PER_ELEMENT[kv_cache]
    steps = step_tokens(config)
    tpf = {**PUBLISHED_TOKENS_PER_FORWARD, **(tokens_per_forward or {})}
    plan = BuildPlan(
        sku.name,
        precision,
        counts.linear + counts.other,
        weight_bytes,
        kv_per_token,
        memory_fraction,
        context,
        None,
        None,
        steps,
        tpf,
        step_positions=step_positions(config),
    )
    if sku.memory_gb:
        budget = sku.memory_gb * 1e9 * memory_fraction - weight_bytes
        plan.max_kv_tokens = max(0, int(budget // kv_per_token))
        plan.max_batch_at_context = plan.max_kv_tokens // context
        if plan.max_batch_at_context < 1:
            plan.notes.append(f"does not fit: weights + one {context}-token context exceed {memory_fraction:.0%}")
    else:
        plan.notes.append("host memory: no device budget")
    if precision == "int4-awq":
        in_features = {"hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size}
        in_features["heads x head_dim"] = config.num_attention_heads * config.head_dim
        uneven = [f"{name} {value}" for name, value in in_features.items() if value % 128]
        if uneven:
            plan.notes.append(f"int4-awq needs in-features divisible by its 128 block: {', '.join(uneven)}")
    if sku.bandwidth_gbs:
        seconds = (weight_bytes + kv_per_token * context) / (sku.bandwidth_gbs * 1e9)
        plan.roofline_tokens_per_second = {mode: tpf[mode] / seconds for mode in steps}
    return plan


def plan_table(plan: BuildPlan) -> str:
    """A short human-readable summary of a plan."""
    gib = 2**30
    lines = [
        f"target {plan.target}, precision {plan.precision}: {plan.parameters / 1e6:,.1f}M parameters, "
        f"weights {plan.weight_bytes / gib:.2f} GiB, KV {plan.kv_bytes_per_token / 1024:.1f} KiB/token",
    ]
    if plan.max_kv_tokens is not None:
        lines.append(
            f"at {plan.memory_fraction:.0%} of memory: {plan.max_kv_tokens:,} KV tokens = "
            f"{plan.max_batch_at_context} sequences of {plan.context} tokens"
        )
    lines += ["", "| mode | tokens per step | positions | tokens/forward (assumed) | roofline tokens/s, one user |"]
    lines.append("|---|---|---|---|---|")
    for mode, tokens in plan.step_tokens.items():
        roofline = plan.roofline_tokens_per_second.get(mode)
        shown = f"{roofline:,.0f}" if roofline is not None else "-"
        span = plan.step_positions.get(mode, tokens)
        lines.append(f"| {mode} | {tokens} | {span} | {plan.tokens_per_forward[mode]:.2f} | {shown} |")
    lines += [f"note: {note}" for note in plan.notes]
    return "\n".join(lines)
