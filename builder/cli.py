"""`nld-build`: the target matrix and build plans (the export and engine stages land with issue 5)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from nld.builder.plan import make_plan, plan_table
from nld.builder.skus import PRECISIONS, SKUS, get_sku, targets_table
from nld.config import load_config
from nld.errors import NLDError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nld-build", description="Build an NLD model for a GPU SKU")
    parser.add_argument("--list-targets", action="store_true", help="print the target x precision matrix")
    parser.add_argument("--model", help="Hugging Face NLD checkpoint folder")
    parser.add_argument("--target", help=f"one of {', '.join(SKUS)}")
    parser.add_argument("--precision", help=f"one of {', '.join(PRECISIONS)}")
    parser.add_argument("--max-context", type=int, help="context per sequence for the plan (default: the model's)")
    parser.add_argument("--memory-fraction", type=float, default=0.9, help="share of device memory to plan for")
    parser.add_argument("--dry-run", action="store_true", help="print the build plan and stop")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nld-build` console script."""
    args = build_parser().parse_args(argv)
    try:
        if args.list_targets:
            print(targets_table())
            return 0
        missing = [f"--{name}" for name in ("model", "target", "precision") if getattr(args, name) is None]
        if missing:
            raise NLDError(f"{', '.join(missing)} required (or --list-targets)")
        sku = get_sku(args.target)
        config = load_config(args.model)
        plan = make_plan(config, sku, args.precision, args.max_context, args.memory_fraction)
        if not args.dry_run:
            raise NLDError(
                "only --dry-run (the build plan) and --list-targets are available so far; the export, "
                "engine and repository stages are not implemented yet"
            )
        print(json.dumps(plan.as_dict(), indent=2) if args.json else plan_table(plan))
        return 0
    except (NLDError, ValueError) as error:
        print(f"nld-build: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
