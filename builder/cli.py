"""`nld-build`: the target matrix, build plans, and builds (a thin wrapper over nld.builder.pipeline).

SIGINT / SIGTERM stop every stage (builder/interrupts.py): one line, exit 130 / 143, nothing written.
The heavy modules (torch, the pipeline) are imported after the handlers are installed, so a stop during
start-up is handled the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from nld.builder.interrupts import Interrupted, stop_on_signals
from nld.builder.skus import PRECISIONS, SKUS, get_sku, targets_table
from nld.cli_common import quiet_stdout, show_defaults
from nld.errors import NLDError
from nld.models import default_model_dir


def build_parser() -> argparse.ArgumentParser:
    from nld.modes import MODES

    parser = argparse.ArgumentParser(prog="nld-build", description="Build an NLD model for a GPU SKU")
    parser.add_argument("--list-targets", action="store_true", help="print the target x precision matrix")
    parser.add_argument(
        "--verify", type=Path, metavar="OUT", help="re-hash a build's artifacts against its manifest.json and stop"
    )
    parser.add_argument("--model", help="Hugging Face NLD checkpoint folder (default: the built-in tiny model)")
    parser.add_argument("--target", help=f"one of {', '.join(SKUS)}")
    parser.add_argument("--precision", help=f"one of {', '.join(PRECISIONS)}")
    parser.add_argument("--output", type=Path, help="build folder (written atomically)")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel size: 1, 2, 4 or 8")
    parser.add_argument("--max-batch", type=int, default=16, help="requests decoded at once")
    parser.add_argument("--max-context", type=int, help="context per sequence (default: the model's)")
    parser.add_argument(
        "--modes", default=",".join(MODES), help="decoding modes the engine's decode profile covers (comma-separated)"
    )
    parser.add_argument("--max-prefill", type=int, default=1024, help="longest prompt the prefill profile takes")
    parser.add_argument("--calib", type=Path, help="fp8/int4-awq: calibration text or JSONL (default: built-in set)")
    parser.add_argument("--samples", type=int, default=64, help="fp8/int4-awq: calibration windows (256 tokens)")
    parser.add_argument("--kv-cache", choices=["fp8"], help="fp8/int4-awq: also quantize the KV cache")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --output")
    parser.add_argument("--memory-fraction", type=float, default=0.9, help="share of device memory to plan for")
    parser.add_argument("--dry-run", action="store_true", help="print the build plan and stop")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    return show_defaults(parser)


QUANTIZED = ("fp8", "int4-awq", "nvfp4")


def _verify(out: Path) -> int:
    """`nld-build --verify OUT`: 0 when every artifact is there unchanged, 1 with the list otherwise."""
    from nld.builder.artifacts import MANIFEST, verify_build

    problems = verify_build(out)
    for problem in problems:
        print(problem)
    print(
        f"{out}: {'OK, every artifact of ' + MANIFEST + ' matches' if not problems else f'{len(problems)} problem(s)'}",
        file=sys.stderr,
    )
    return 1 if problems else 0


def check_options(args: argparse.Namespace, config: object) -> None:
    """Options a plan or a build would otherwise accept and ignore."""
    from nld.convert.trtllm import check_tp

    if args.kv_cache is not None and args.precision not in QUANTIZED:
        raise NLDError(
            f"--kv-cache {args.kv_cache} applies to the quantized precisions ({', '.join(QUANTIZED)}), "
            f"not {args.precision}"
        )
    check_tp(config, args.tp)  # type: ignore[arg-type]


def _run(args: argparse.Namespace) -> int:
    from nld.builder.pipeline import BuildRequest, build
    from nld.builder.plan import make_plan, plan_table
    from nld.config import load_config

    if args.list_targets:
        print(targets_table())
        return 0
    if args.verify is not None:
        return _verify(args.verify)
    missing = [f"--{name}" for name in ("target", "precision") if getattr(args, name) is None]
    if missing:
        raise NLDError(f"{', '.join(missing)} required (or --list-targets)")
    model = Path(args.model) if args.model else default_model_dir()
    sku = get_sku(args.target)
    check_options(args, load_config(model))
    if args.dry_run:
        plan = make_plan(
            load_config(model), sku, args.precision, args.max_context, args.memory_fraction, kv_cache=args.kv_cache
        )
        print(json.dumps(plan.as_dict(), indent=2) if args.json else plan_table(plan))
        return 0
    if args.output is None:
        raise NLDError("--output required (or --dry-run)")
    request = BuildRequest(
        model,
        args.target,
        args.precision,
        args.output,
        args.tp,
        args.max_batch,
        args.max_context,
        args.force,
        tuple(mode.strip() for mode in args.modes.split(",") if mode.strip()),
        args.max_prefill,
        args.calib,
        args.samples,
        args.kv_cache,
    )
    with contextlib.redirect_stdout(sys.stderr):  # ModelOpt and the exporters print; stdout is for the path
        output = build(request, log=lambda line: print(line, file=sys.stderr))
    print(output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nld-build` console script."""
    output = None
    with stop_on_signals():
        try:
            args = build_parser().parse_args(argv)
            output = args.output
            return _run(args)
        except (NLDError, ValueError) as error:
            print(f"nld-build: error: {error}", file=sys.stderr)
            return 2
        except BrokenPipeError:  # `nld-build --dry-run | head`: the reader left; say nothing more
            quiet_stdout()
            return 0
        except Interrupted as stop:
            where = f" to {output}" if output is not None else ""
            print(f"nld-build: interrupted ({stop.name}); nothing written{where}", file=sys.stderr, flush=True)
            return stop.exit_code


if __name__ == "__main__":
    sys.exit(main())
