"""What quantization costs each decoding mode: the quantized model next to the unquantized one on the
same held-out prompts (greedy), as a table and JSON.

Per mode: token agreement (share of the reference's greedy tokens the quantized model reproduces at
the same position), the mean length of the common prefix before the first differing token, identical
outputs, tokens per forward and, for the self-speculation modes, mean
acceptance length, each with its delta; plus held-out perplexity of both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from nld.evaluate import ModeReport, evaluate_modes, perplexity
from nld.step import StepBackend


@dataclass
class ModeQuality:
    mode: str
    adapter: bool
    token_agreement: float
    common_prefix: float
    identical_outputs: int
    prompts: int
    tokens_per_forward: float
    tokens_per_forward_reference: float
    acceptance_length: float | None
    acceptance_length_reference: float | None


def token_agreement(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """Share of reference tokens that the candidate has at the same position (over all prompts)."""
    same = sum(
        sum(a == b for a, b in zip(ref, cand, strict=False)) for ref, cand in zip(reference, candidate, strict=True)
    )
    return same / max(1, sum(len(ref) for ref in reference))


def common_prefix(reference: list[list[int]], candidate: list[list[int]]) -> float:
    """Mean number of leading tokens the candidate shares with the reference."""
    lengths = []
    for ref, cand in zip(reference, candidate, strict=True):
        same = 0
        while same < min(len(ref), len(cand)) and ref[same] == cand[same]:
            same += 1
        lengths.append(same)
    return sum(lengths) / max(1, len(lengths))


def quality_report(
    reference: StepBackend,
    quantized: StepBackend,
    prompts: list[list[int]],
    perplexity_windows: list[list[int]],
    max_new_tokens: int,
) -> dict:
    """Run both backends on every mode; returns the report as a JSON-ready dict."""
    ref_ids: dict[tuple[str, bool], list[list[int]]] = {}
    quant_ids: dict[tuple[str, bool], list[list[int]]] = {}
    ref_reports = evaluate_modes(reference, prompts, max_new_tokens, outputs=ref_ids)
    quant_reports = evaluate_modes(quantized, prompts, max_new_tokens, outputs=quant_ids)
    modes = []
    for ref, quant in zip(ref_reports, quant_reports, strict=True):
        key = (ref.mode, ref.adapter)
        modes.append(_mode_quality(ref, quant, ref_ids[key], quant_ids[key]))
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "perplexity_reference": perplexity(reference, perplexity_windows),
        "perplexity_quantized": perplexity(quantized, perplexity_windows),
        "modes": [asdict(mode) for mode in modes],
    }


def _mode_quality(
    ref: ModeReport, quant: ModeReport, ref_ids: list[list[int]], quant_ids: list[list[int]]
) -> ModeQuality:
    return ModeQuality(
        mode=ref.mode,
        adapter=ref.adapter,
        token_agreement=token_agreement(ref_ids, quant_ids),
        common_prefix=common_prefix(ref_ids, quant_ids),
        identical_outputs=sum(a == b for a, b in zip(ref_ids, quant_ids, strict=True)),
        prompts=ref.prompts,
        tokens_per_forward=quant.tokens_per_forward,
        tokens_per_forward_reference=ref.tokens_per_forward,
        acceptance_length=quant.mean_acceptance_length,
        acceptance_length_reference=ref.mean_acceptance_length,
    )


def _delta(value: float | None, reference: float | None) -> str:
    if value is None or reference is None:
        return "-"
    return f"{value:.2f} ({value - reference:+.2f})"


def markdown(report: dict, precision: str) -> str:
    """The report as a Markdown table."""
    ppl_ref, ppl_q = report["perplexity_reference"], report["perplexity_quantized"]
    lines = [
        f"{precision} vs unquantized: {report['prompts']} held-out prompts, {report['max_new_tokens']} new tokens, "
        f"greedy. Held-out perplexity {ppl_q:.2f} vs {ppl_ref:.2f} ({ppl_q - ppl_ref:+.2f}).",
        "",
        "| mode | draft adapter | token agreement | common prefix | identical outputs | tokens/forward (delta) "
        "| acceptance (delta) |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode in report["modes"]:
        adapter = "yes" if mode["adapter"] else ("no" if mode["mode"] == "linear-spec" else "-")
        lines.append(
            f"| {mode['mode']} | {adapter} | {mode['token_agreement']:.3f} | {mode['common_prefix']:.1f} | "
            f"{mode['identical_outputs']}/{mode['prompts']} | "
            f"{_delta(mode['tokens_per_forward'], mode['tokens_per_forward_reference'])} | "
            f"{_delta(mode['acceptance_length'], mode['acceptance_length_reference'])} |"
        )
    return "\n".join(lines)


def write_report(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
