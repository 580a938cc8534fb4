"""The AR / self-speculation crossover: the lowest measured concurrency at which AR's total throughput
reaches self-speculation's. Mode `auto` speculates below it (`auto_threshold`), so a bench run on the
deployment hardware gives `nld repo --auto-threshold <out>/crossover.json` its value."""

from __future__ import annotations

import json
from pathlib import Path

from nld.errors import NLDError

SPECULATIVE = "linear-spec"  # what `auto` runs below the threshold (nld/engine/scheduler.py)
CROSSOVER_FILE = "crossover.json"


def find_crossover(records: list[dict], speculative: str = SPECULATIVE) -> dict:
    """{"auto_threshold": N or None, "levels": [...]}: N = the first concurrency where AR's total tok/s
    >= the speculative mode's; None when AR never catches up within the sweep (speculate up to it)."""
    by_mode = {(r["mode"], r["concurrency"]): r["output_tokens_per_s"] for r in records}
    levels = sorted({c for mode, c in by_mode if mode == "ar"} & {c for mode, c in by_mode if mode == speculative})
    if not levels:
        raise NLDError(f"the crossover needs 'ar' and '{speculative}' measured at the same concurrency levels")
    table = [{"concurrency": c, "ar": by_mode["ar", c], speculative: by_mode[speculative, c]} for c in levels]
    threshold = next((row["concurrency"] for row in table if row["ar"] >= row[speculative]), None)
    return {"auto_threshold": threshold, "speculative_mode": speculative, "levels": table, "max_level": levels[-1]}


def read_auto_threshold(path: Path) -> int:
    """The `auto_threshold` of a crossover.json (or of a bench.json's `crossover`): AR from that many
    concurrent requests on. None in the file (AR never caught up) means speculating up to one past the
    highest level measured."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise NLDError(f"{path}: cannot read a crossover ({error})") from None
    data = data.get("crossover", data)
    if "auto_threshold" not in data or "max_level" not in data:
        raise NLDError(f"{path}: no 'auto_threshold' / 'max_level' (write it with nld bench)")
    threshold = data["auto_threshold"]
    return int(threshold) if threshold is not None else int(data["max_level"]) + 1
