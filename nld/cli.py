"""`nld` command line: thin wrappers over library functions."""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from nld.backends.torch_backend import DTYPES
from nld.checkpoint import NonFiniteWeightsWarning
from nld.cli_bench import add_bench_command
from nld.cli_common import (
    add_output_controls,
    apply_build,
    output_control_values,
    print_logprobs,
    prompt_ids_type,
    quiet_stdout,
    read_messages,
    show_defaults,
)
from nld.cli_quantize import add_quantize_commands
from nld.cli_serve import add_serving_commands
from nld.errors import NLDError
from nld.evaluate import eval_token_stream, evaluate_modes, markdown_table, perplexity, sample_prompts, write_report
from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams
from nld.tokenizer import NLDTokenizer


def _add_generate(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="decode one prompt with a chosen mode")
    _add_model_options(parser)
    parser.add_argument("--mode", choices=list(MODES), default="linear-spec")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (needs tokenizer.json; chat template applied when present)")
    prompt.add_argument("--prompt-ids", type=prompt_ids_type, help="prompt as comma-separated token ids")
    prompt.add_argument(
        "--messages", type=Path, help="a chat as JSON ([{role, content}, ...]; - for stdin) for the chat template"
    )
    parser.add_argument("--no-chat-template", action="store_true", help="encode --prompt as raw text")
    parser.add_argument("--max-new-tokens", "--max-tokens", type=int, default=128, help="tokens to generate at most")
    parser.add_argument(
        "--block-length",
        type=int,
        help="block size (default: the config's block_size; quadratic-spec: 2 on a CPU, else 16, at most that)",
    )
    parser.add_argument("--threshold", type=float, help="confidence threshold for committing / draft filling")
    parser.add_argument("--no-causal-context", action="store_true", help="diffusion: bidirectional prefill/commit")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    parser.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x the top probability")
    parser.add_argument("--seed", type=int, help="seed for sampling (temperature > 0)")
    add_output_controls(parser)
    parser.add_argument("--no-lora", action="store_true", help="ignore the linear_spec_lora/ draft adapter")
    parser.add_argument(
        "--reference-semantics",
        action="store_true",
        help="behave exactly as the released reference code (mask id may be emitted; linear-spec may overshoot)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(handler=run_generate)


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="NLD checkpoint folder (default: the built-in tiny model)")
    parser.add_argument(
        "--backend", help="step backend: torch, onnxruntime or tensorrt (CUDA) (default: the build's, else torch)"
    )
    parser.add_argument(
        "--build",
        type=Path,
        help="an nld-build output: its checkpoint, backend and dtype, and its onnx/ (onnxruntime) or engine/ "
        "(tensorrt); --model, --backend, --dtype override",
    )
    parser.add_argument(
        "--dtype", help=f"one of {', '.join(DTYPES)} (or fp32, bf16, fp16) (default: the build's, else float32)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="torch backend: run the decode steps as compiled static-shape graphs (CUDA graphs on a GPU); "
        "compiling takes seconds per step shape (default: off; docs/bench.md measures both)",
    )


def _model_dir(args: argparse.Namespace) -> str:
    """The model folder; with --build, what the build implies fills the options not given."""
    apply_build(args)
    return args.model or str(default_model_dir())


def _add_eval(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("eval", help="per-mode perplexity, tokens/forward, acceptance, speed")
    _add_model_options(parser)
    parser.add_argument("--prompts", type=int, default=32, help="held-out prompts per mode")
    parser.add_argument("--prompt-length", type=int, default=64, help="tokens per prompt")
    parser.add_argument("--max-new-tokens", "--max-tokens", type=int, default=64, help="tokens per prompt at most")
    parser.add_argument(
        "--block-length", type=int, help="block size (default: the config's; quadratic-spec: min(16, that))"
    )
    parser.add_argument("--perplexity-windows", type=int, default=32, help="held-out windows of 256 tokens")
    parser.add_argument("--no-lora", action="store_true", help="ignore the draft adapter")
    parser.add_argument(
        "--stdlib",
        type=Path,
        help="standard-library folder to draw held-out prompts from (default: this interpreter's; "
        "another Python version gives other prompts)",
    )
    parser.add_argument("--out", type=Path, default=Path("eval.json"), help="JSON report path")
    parser.set_defaults(handler=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """`nld eval`: held-out prompts from the stdlib corpus's held-out split, every mode, table + JSON."""
    model = _model_dir(args)
    backend = load_backend(model, args.backend, args.dtype, args.device, not args.no_lora, args.build, args.compile)
    tokenizer = NLDTokenizer.from_dir(model)
    if tokenizer is None:
        raise NLDError(f"{model}: no tokenizer.json; nld eval draws held-out prompts as text")
    stream = eval_token_stream(tokenizer, args.stdlib)
    prompts = sample_prompts(stream, args.prompts, args.prompt_length)
    ppl = perplexity(backend, sample_prompts(stream, args.perplexity_windows, 256, seed=1))
    reports = evaluate_modes(backend, prompts, args.max_new_tokens, args.block_length, tokenizer.decode)
    print(markdown_table(reports, ppl))
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "handler"}
    settings["model"] = model
    write_report(args.out, reports, ppl, settings)
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN: a position never decoded (reference semantics) reports null."""
    return value if math.isfinite(value) else None


def run_generate(args: argparse.Namespace) -> int:
    """`nld generate`: load, encode, decode, print."""
    model = _model_dir(args)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NonFiniteWeightsWarning)
        backend = load_backend(model, args.backend, args.dtype, args.device, not args.no_lora, args.build, args.compile)
    for warning in caught:  # a NaN/Inf tensor: one line, then generate anyway; other warnings as usual
        if issubclass(warning.category, NonFiniteWeightsWarning):
            print(f"nld: warning: {warning.message}; generating anyway", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    tokenizer = NLDTokenizer.from_dir(model)
    if args.prompt_ids is not None:
        prompt_ids = args.prompt_ids
    elif tokenizer is None:
        raise NLDError(f"{model}: no tokenizer.json, so --prompt/--messages cannot be encoded; use --prompt-ids")
    elif args.messages is not None:
        prompt_ids = tokenizer.encode_messages(read_messages(args.messages))
    else:
        prompt_ids = tokenizer.encode_prompt(args.prompt, chat=not args.no_chat_template)
    params = GenerationParams(
        max_new_tokens=args.max_new_tokens,
        block_length=args.block_length,
        threshold=args.threshold,
        causal_context=not args.no_causal_context,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        seed=args.seed,
        use_adapter=not args.no_lora,
        reference_semantics=args.reference_semantics,
        **output_control_values(args),
    )
    streamer = None
    if tokenizer is not None and not args.json:  # text as it becomes final, as `nld client` prints it

        def streamer(ids: list[int], text: str) -> None:
            print(text, end="", flush=True)

    raw_tokenizer = tokenizer.tokenizer if tokenizer is not None else None
    result = generate(backend, prompt_ids, args.mode, params, streamer, raw_tokenizer)
    if streamer is not None:
        print(flush=True)
    record = {
        "mode": args.mode,
        "prompt_ids": prompt_ids,
        "new_ids": result.new_ids,
        "nfe": result.nfe,
        "forwards": result.forwards,
        "tokens_per_forward": round(result.tokens_per_forward, 4),
        "mean_acceptance_length": result.mean_acceptance_length,
        "finish_reason": result.finish_reason,
        "seconds": round(result.seconds, 4),
    }
    compiled = getattr(backend, "compiled", None)
    if compiled is not None:  # the first step of each shape compiled it: part of `seconds`
        record["compile_seconds"] = round(backend.compile_seconds, 2)  # type: ignore[attr-defined]
    if tokenizer is not None:
        record["text"] = result.text
    if result.logprobs is not None:
        record["logprobs"] = [
            {"id": token, "logprob": finite_or_none(entry.logprob), "top": [list(pair) for pair in entry.top]}
            for token, entry in zip(result.new_ids, result.logprobs, strict=True)
        ]
    if args.json:
        print(json.dumps(record))
    else:
        if streamer is None:
            print(" ".join(map(str, result.new_ids)))
        print(
            f"[{args.mode}] {len(result.new_ids)} tokens, nfe {result.nfe}, "
            f"{record['tokens_per_forward']} tokens/forward, {record['seconds']} s ({result.finish_reason})"
            + (f", {record['compile_seconds']} s of it compiling" if compiled is not None else ""),
            file=sys.stderr,
        )
        if result.logprobs is not None:
            tops = [list(entry.top) for entry in result.logprobs]
            print_logprobs(result.new_ids, [entry.logprob for entry in result.logprobs], tops)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nld", description="Nemotron-Labs-Diffusion toolkit")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_generate(subparsers)
    _add_eval(subparsers)
    add_serving_commands(subparsers, _add_model_options, _model_dir)
    add_quantize_commands(subparsers, _model_dir)
    add_bench_command(subparsers, _add_model_options, _model_dir)
    return show_defaults(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `nld` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (NLDError, ValueError) as exc:
        print(f"nld: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `nld ... | head`: the reader left
        quiet_stdout()
        return 0


if __name__ == "__main__":
    sys.exit(main())
