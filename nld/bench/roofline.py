"""The roofline companion: for an nld-build plan (plan.json) and its SKU, the predicted single-user
tokens/s of each mode next to what the benchmark measured at concurrency 1, compared only when the
measurement ran on that SKU (same compute capability, or the CPU for the cpu target)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from nld.builder.skus import get_sku
from nld.errors import NLDError


def measured_on_sku(target: str, device: str) -> bool:
    """Whether a benchmark on `device` (cpu, cuda, cuda:N, or a server URL) ran on the plan's SKU."""
    sku = get_sku(target)
    if sku.compute_capability is None:
        return device == "cpu"
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    return f"{major}.{minor}" == sku.compute_capability


def roofline_rows(plan_path: Path, records: list[dict], device: str) -> list[dict]:
    """Per mode measured at concurrency 1: the plan's roofline tok/s (its assumed TPF), the same roofline
    at the measured TPF, the measured tok/s per user, and measured / roofline when on the SKU."""
    try:
        plan = json.loads(Path(plan_path).read_text())
        roofline = plan["roofline_tokens_per_second"]
        assumed = plan["tokens_per_forward"]
        target = plan["target"]
    except (OSError, json.JSONDecodeError, KeyError) as error:
        raise NLDError(f"--plan {plan_path}: not an nld-build plan.json ({error})") from None
    on_sku = measured_on_sku(target, device)
    rows = []
    for record in records:
        mode = record["mode"]
        if record["concurrency"] != 1 or mode not in roofline:
            continue
        seconds_per_forward = assumed[mode] / roofline[mode]  # the roofline's time per forward
        at_measured_tpf = record["tokens_per_forward"] / seconds_per_forward
        measured = record["output_tokens_per_s_per_user"]
        rows.append(
            {
                "mode": mode,
                "target": target,
                "roofline_tokens_per_s": round(roofline[mode], 1),
                "assumed_tokens_per_forward": assumed[mode],
                "measured_tokens_per_forward": record["tokens_per_forward"],
                "roofline_at_measured_tpf": round(at_measured_tpf, 1),
                "measured_tokens_per_s": measured,
                "measured_on_target": on_sku,
                "share_of_roofline": round(measured / at_measured_tpf, 3) if on_sku else None,
            }
        )
    return rows


def roofline_markdown(rows: list[dict]) -> str:
    lines = [
        "| mode | target | roofline tok/s (assumed TPF) | roofline tok/s at measured TPF | measured tok/s | "
        "measured on target | share of roofline |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        share = "-" if row["share_of_roofline"] is None else f"{row['share_of_roofline']:.0%}"
        predicted = f"{row['roofline_tokens_per_s']:,} ({row['assumed_tokens_per_forward']})"
        lines.append(
            f"| {row['mode']} | {row['target']} | {predicted} | {row['roofline_at_measured_tpf']:,} | "
            f"{row['measured_tokens_per_s']} | {'yes' if row['measured_on_target'] else 'no'} | {share} |"
        )
    return "\n".join(lines)
