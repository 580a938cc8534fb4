"""`nld quantize` (write a quantized checkpoint) and `nld quant-report` (what a precision costs each mode)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

from nld.quantize.checkpoint import quantize_checkpoint
from nld.quantize.evidence import EvidenceRequest, run_evidence
from nld.quantize.recipes import KV_CACHE_RECIPES, RECIPES
from nld.quantize.report import markdown, write_report


def add_quantize_commands(
    subparsers: argparse._SubParsersAction, model_dir: Callable[[argparse.Namespace], str]
) -> None:
    defaults = EvidenceRequest(model=Path("."), precision="fp8")
    quantize = subparsers.add_parser("quantize", help="write a ModelOpt-quantized checkpoint (unified HF)")
    _add_recipe_options(quantize, defaults)
    quantize.add_argument("--output", type=Path, required=True, help="checkpoint folder (written atomically)")
    quantize.add_argument("--force", action="store_true", help="replace a non-empty --output")
    quantize.set_defaults(handler=lambda args: run_quantize(args, model_dir(args)))

    parser = subparsers.add_parser("quant-report", help="quantize in memory and report the cost per mode")
    _add_recipe_options(parser, defaults)
    parser.add_argument("--prompts", type=int, default=defaults.prompts, help="held-out prompts per mode")
    parser.add_argument(
        "--max-new-tokens", "--max-tokens", type=int, default=defaults.max_new_tokens, help="tokens per prompt"
    )
    parser.add_argument(
        "--perplexity-windows", type=int, default=defaults.perplexity_windows, help="held-out windows of 256 tokens"
    )
    parser.add_argument("--out", type=Path, default=Path("quant_report.json"), help="JSON report path")
    parser.set_defaults(handler=lambda args: run_quant_report(args, model_dir(args)))


def _add_recipe_options(parser: argparse.ArgumentParser, defaults: EvidenceRequest) -> None:
    parser.add_argument("--model", help="NLD checkpoint folder (default: the built-in tiny model)")
    parser.add_argument("--precision", required=True, choices=list(RECIPES))
    parser.add_argument("--calib", type=Path, help="calibration text (.txt) or JSONL with a 'text' field")
    parser.add_argument("--samples", type=int, default=defaults.samples, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len, help="tokens per calibration window")
    parser.add_argument("--kv-cache", choices=list(KV_CACHE_RECIPES), help="also quantize the KV cache")
    parser.add_argument("--device", default="cpu", help="where calibration runs (nvfp4 needs cuda)")


def run_quantize(args: argparse.Namespace, model: str) -> int:
    with contextlib.redirect_stdout(sys.stderr):  # ModelOpt prints; stdout is for the output path
        output = quantize_checkpoint(
            Path(model),
            args.precision,
            args.output,
            args.calib,
            args.samples,
            args.seq_len,
            args.kv_cache,
            args.device,
            args.force,
            log=lambda line: print(line, file=sys.stderr),
        )
    print(output)
    return 0


def run_quant_report(args: argparse.Namespace, model: str) -> int:
    request = EvidenceRequest(
        model=Path(model),
        precision=args.precision,
        calibration=args.calib,
        samples=args.samples,
        seq_len=args.seq_len,
        kv_cache=args.kv_cache,
        prompts=args.prompts,
        max_new_tokens=args.max_new_tokens,
        perplexity_windows=args.perplexity_windows,
        device=args.device,
    )
    with contextlib.redirect_stdout(sys.stderr):  # ModelOpt prints; stdout is for the table
        report = run_evidence(request)
    print(markdown(report, args.precision))
    write_report(args.out, report)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0
