#!/usr/bin/env python3
"""Train the built-in tiny NLD model (CPU, ~1 hour on 2 cores) into nld/models/tiny.

Rerun to resume an interrupted run (state in --work). `--quick` runs a few steps of every phase.
`--start-from OTHER-WORK/after-nld.pt` skips the AR and NLD phases when only chain settings differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from nld.tiny.draft_adapter import DraftAdapterSettings
from nld.tiny.train import TrainSettings, train

REPO = Path(__file__).resolve().parents[1]


def with_overrides(settings: TrainSettings, overrides: list[str]) -> TrainSettings:
    """Apply NAME=VALUE overrides, converting each value to the field's type."""
    for override in overrides:
        name, _, value = override.partition("=")
        target, field_name = (
            (settings.adapter, name[len("adapter.") :]) if name.startswith("adapter.") else (settings, name)
        )
        current = getattr(target, field_name, None)
        if current is None or not value:
            raise SystemExit(f"--set {override}: unknown setting '{name}' or empty value")
        typed = (value.lower() in ("1", "true", "yes")) if isinstance(current, bool) else type(current)(value)
        if target is settings.adapter:
            settings = dataclasses.replace(
                settings, adapter=dataclasses.replace(settings.adapter, **{field_name: typed})
            )
        else:
            settings = dataclasses.replace(settings, **{field_name: typed})
    return settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, default=REPO / "nld" / "models" / "tiny")
    parser.add_argument("--work", type=Path, default=REPO / "build" / "tiny-train")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few steps per phase")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a TrainSettings field (adapter fields as adapter.NAME), e.g. --set vocab_size=1024",
    )
    parser.add_argument(
        "--start-from",
        type=Path,
        help="begin with a state another run saved at a phase end (its work folder's after-nld.pt); "
        "its settings must match this run's except those of the phases after it",
    )
    args = parser.parse_args()
    settings = with_overrides(TrainSettings(), args.set)
    if args.quick:
        adapter = DraftAdapterSettings(chunks=2, chunk_rows=32, check_prompts=2, check_tokens=16)
        settings = dataclasses.replace(
            settings, ar_steps=4, nld_steps=4, chain_steps=4, warmup_steps=2, adapter=adapter
        )
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {message}", flush=True)

    output = train(args.output, args.work, settings, log, start_from=args.start_from)
    log(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
