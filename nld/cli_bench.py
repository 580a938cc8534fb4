"""`nld bench`: every mode at every concurrency level, in process or through a server; a Markdown table and JSON."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from nld.bench.prompts import load_prompts
from nld.bench.roofline import roofline_markdown, roofline_rows
from nld.bench.sweep import BenchSettings, in_process, markdown_table, run_sweep, served, served_openai, write_results
from nld.errors import NLDError
from nld.generate import load_backend
from nld.serving.served_names import default_served_name
from nld.tokenizer import NLDTokenizer


def _levels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"--concurrency must be comma-separated integers, got {text!r}") from None


def add_bench_command(
    subparsers: argparse._SubParsersAction,
    add_model_options: Callable[[argparse.ArgumentParser], None],
    model_dir: Callable[[argparse.Namespace], str],
) -> None:
    defaults = BenchSettings()
    parser = subparsers.add_parser("bench", help="tokens/forward, acceptance, throughput and latency per mode")
    add_model_options(parser)
    parser.add_argument("--modes", default=",".join(defaults.modes), help="comma-separated decoding modes")
    parser.add_argument("--concurrency", type=_levels, default=defaults.concurrency, help="levels, e.g. 1,4,16")
    parser.add_argument("--prompts", type=Path, help="JSONL with a 'prompt' (and 'category') per line")
    parser.add_argument(
        "--max-new-tokens", "--max-tokens", type=int, default=defaults.max_new_tokens, help="tokens per request"
    )
    parser.add_argument("--block-length", type=int, help="block length of the non-AR modes (default: each mode's)")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="unmeasured requests per point")
    parser.add_argument("--repeat", type=int, default=defaults.repeat, help="passes over the prompt set per point")
    parser.add_argument("--out", type=Path, default=Path("bench"), help="folder for the JSON, table and charts")
    parser.add_argument("--plan", type=Path, help="an nld-build plan.json: its roofline next to the measurement")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", help="benchmark a running Triton server (gRPC host:port) instead of in process")
    target.add_argument("--openai", metavar="URL", help="benchmark an OpenAI endpoint (http://HOST:PORT/v1) instead")
    parser.add_argument(
        "--metrics-url",
        help="Prometheus endpoint(s), comma-separated: with --url tritonserver's (nld serve prints it), for "
        "batched forwards; with --openai each worker's (nld serve-openai prints them), for tokens/forward "
        "and acceptance",
    )
    parser.add_argument("--served-name", help="with --openai: the model name (default: as nld serve-openai names it)")

    def run(args: argparse.Namespace) -> int:
        settings = BenchSettings(
            tuple(mode.strip() for mode in args.modes.split(",") if mode.strip()),
            args.concurrency,
            args.max_new_tokens,
            args.warmup,
            args.repeat,
            args.block_length,
        )
        settings.check()
        prompts = load_prompts(args.prompts)
        if args.url:
            metrics_url = args.metrics_url
            if metrics_url is None:
                print("nld bench: no --metrics-url: batched forwards are not measured", file=sys.stderr)
            measure = served(args.url, metrics_url, prompts, settings)
            context = {"url": args.url, "metrics_url": metrics_url, "backend": "server", "device": args.url}
        elif args.openai:
            model = model_dir(args)
            tokenizer = NLDTokenizer.from_dir(model)
            if tokenizer is None:
                raise NLDError(f"{model}: no tokenizer.json; --openai counts streamed tokens with it")
            metrics_urls = [url.strip() for url in (args.metrics_url or "").split(",") if url.strip()]
            if not metrics_urls:
                print("nld bench: no --metrics-url: tokens/forward and acceptance are not measured", file=sys.stderr)
            name = args.served_name or default_served_name(model)
            measure = served_openai(args.openai, name, metrics_urls, tokenizer, prompts, settings)
            context = {"openai": args.openai, "metrics_urls": metrics_urls, "backend": "openai", "device": args.openai}
        else:
            model = model_dir(args)
            tokenizer = NLDTokenizer.from_dir(model)
            if tokenizer is None:
                raise NLDError(f"{model}: no tokenizer.json; the benchmark prompts are text")
            backend = load_backend(model, args.backend, args.dtype, args.device, True, args.build, args.compile)
            measure = in_process(backend, tokenizer, prompts, settings)
            context = {"model": model, "backend": args.backend, "dtype": args.dtype, "device": args.device}
        records = run_sweep(measure, len(prompts), settings)
        context |= {
            "prompts": str(args.prompts or "built-in"),
            "settings": {**vars(settings), "modes": list(settings.modes), "concurrency": list(settings.concurrency)},
        }
        if args.plan is not None:
            context["roofline"] = roofline_rows(args.plan, records, context["device"])
        written = write_results(args.out, records, context)
        print(markdown_table(records))
        if args.plan is not None:
            print("\n" + roofline_markdown(context["roofline"]))
        print(f"\nwrote {', '.join(str(path) for path in written)}", file=sys.stderr)
        return 0

    parser.set_defaults(handler=run)
