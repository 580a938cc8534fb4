"""`nld repo`, `nld serve`, `nld serve-openai`, `nld client`: thin wrappers over nld.serving."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from nld.bench.crossover import read_auto_threshold
from nld.cli_common import add_output_controls, print_logprobs, prompt_ids_type, read_messages
from nld.errors import NLDError
from nld.serving.client import NLDClient
from nld.serving.inputs import REQUEST_MODES
from nld.serving.openai_server import ROUTER_FLAGS, OpenAIServer, OpenAISettings
from nld.serving.repository import (
    MAX_STREAM_INTERVAL_MS,
    STREAM_INTERVAL_MS,
    RepositorySettings,
    check_servable,
    compile_setting,
    has_tokenizer,
    write_repository,
)
from nld.serving.served_names import default_served_name
from nld.serving.server import ServerSettings, TritonServer


def add_serving_commands(
    subparsers: argparse._SubParsersAction,
    add_model_options: Callable[[argparse.ArgumentParser], None],
    model_dir: Callable[[argparse.Namespace], str],
) -> None:
    """Register the serving commands; model options are shared with the other commands."""
    repo = subparsers.add_parser("repo", help="write a Triton model repository for a model")
    add_model_options(repo)
    defaults = RepositorySettings(model_dir="")
    repo.add_argument("--output", type=Path, required=True, help="repository folder to write (replaced)")
    repo.add_argument("--max-batch", type=int, default=defaults.max_batch, help="requests decoded at once")
    repo.add_argument("--kv-blocks", type=int, default=defaults.kv_blocks, help="KV pool size in blocks")
    repo.add_argument("--kv-block-tokens", type=int, default=defaults.kv_block_tokens, help="token slots per block")
    repo.add_argument("--default-mode", choices=list(REQUEST_MODES), default=defaults.default_mode)
    repo.add_argument("--default-max-tokens", type=int, default=defaults.default_max_tokens)
    repo.add_argument(
        "--auto-threshold",
        type=_auto_threshold,
        default=defaults.auto_threshold,
        help="mode auto: self-speculate while fewer requests than this run, else AR; a number, or the "
        "crossover.json (or bench.json) of an nld bench run on the serving hardware",
    )
    _add_stream_interval(repo)
    repo.set_defaults(handler=lambda args: run_repo(args, model_dir(args)))

    serve = subparsers.add_parser("serve", help="run tritonserver on a model repository until Ctrl-C")
    serve.add_argument("repository", type=Path, help="folder written by nld repo")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002)
    serve.add_argument("--tritonserver", help="tritonserver binary (default: $NLD_TRITONSERVER or nvidia-pytriton's)")
    serve.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the model to be ready")
    serve.set_defaults(handler=run_serve)

    openai = subparsers.add_parser(
        "serve-openai", help="an OpenAI-compatible endpoint: NVIDIA Dynamo's frontend + N nld workers, until Ctrl-C"
    )
    add_model_options(openai)
    openai.add_argument(
        "--name", help="served model name (default: nld-tiny for the built-in model, else the folder's)"
    )
    openai.add_argument("--workers", type=int, default=1, help="worker processes, each with its own engine")
    openai.add_argument(
        "--router", choices=list(ROUTER_FLAGS), default="round-robin", help="how requests pick a worker"
    )
    openai.add_argument("--host", default="127.0.0.1", help="address every socket binds (loopback by default)")
    openai.add_argument("--http-port", type=int, default=8000)
    openai.add_argument(
        "--migration-limit", type=int, default=3, help="times a request may move to another worker when its dies"
    )
    openai.add_argument("--default-mode", choices=list(REQUEST_MODES), default=defaults.default_mode)
    openai.add_argument("--max-batch", type=int, default=defaults.max_batch, help="requests decoded at once per worker")
    openai.add_argument("--kv-blocks", type=int, default=defaults.kv_blocks, help="KV pool size in blocks per worker")
    openai.add_argument("--auto-threshold", type=_auto_threshold, default=defaults.auto_threshold)
    _add_stream_interval(openai)
    openai.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for every worker to register")
    openai.set_defaults(handler=lambda args: run_serve_openai(args, model_dir(args)))

    client = subparsers.add_parser("client", help="send one prompt to a running server over gRPC")
    prompt = client.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="prompt text (the server tokenizes it)")
    prompt.add_argument("--prompt-ids", type=prompt_ids_type, help="prompt as comma-separated token ids (input_ids)")
    prompt.add_argument("--messages", type=Path, help="a chat as JSON ([{role, content}, ...]; - for stdin)")
    client.add_argument("--url", default="127.0.0.1:8001", help="gRPC host:port")
    client.add_argument("--mode", choices=list(REQUEST_MODES), help="decoding mode (default: the server's)")
    client.add_argument(
        "--max-tokens", "--max-new-tokens", type=int, help="tokens to generate at most (default: the server's)"
    )
    client.add_argument("--no-stream", action="store_true", help="one response at the end instead of a stream")
    client.add_argument("--temperature", type=float)
    client.add_argument("--top-p", type=float)
    client.add_argument("--top-k", type=int, help="sample among the k most likely tokens (0: all)")
    client.add_argument("--min-p", type=float, help="drop tokens below min-p x the top probability")
    client.add_argument("--seed", type=int)
    add_output_controls(client)
    client.add_argument("--block-length", type=int)
    client.add_argument("--threshold", type=float)
    client.add_argument("--json", action="store_true", help="print one JSON object at the end")
    client.set_defaults(handler=run_client)


def _add_stream_interval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stream-interval-ms",
        type=int,
        default=STREAM_INTERVAL_MS,
        help="a request's streamed responses at most this often; tokens in between go out together "
        f"(0: no waiting; at most {MAX_STREAM_INTERVAL_MS})",
    )


def _auto_threshold(value: str) -> int:
    """--auto-threshold: an integer, or a file whose measured crossover gives it."""
    if value.strip().isdigit():
        return int(value)
    try:
        return read_auto_threshold(Path(value))
    except NLDError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_repo(args: argparse.Namespace, model_dir: str) -> int:
    settings = RepositorySettings(
        model_dir=model_dir,
        backend=args.backend,
        build_dir=str(args.build.resolve()) if args.build else "",
        dtype=args.dtype,
        device=args.device,
        max_batch=args.max_batch,
        kv_blocks=args.kv_blocks,
        kv_block_tokens=args.kv_block_tokens,
        default_mode=args.default_mode,
        default_max_tokens=args.default_max_tokens,
        auto_threshold=args.auto_threshold,
        compile=compile_setting(args.compile),
        stream_interval_ms=args.stream_interval_ms,
    )
    check_servable(settings, needs_tokenizer=False)
    if not has_tokenizer(settings):
        print(f"nld repo: {model_dir} has no tokenizer.json: the server takes input_ids prompts only", file=sys.stderr)
    print(write_repository(args.output, settings))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    settings = ServerSettings(
        args.repository, args.host, args.grpc_port, args.http_port, args.metrics_port, args.tritonserver
    )
    server = TritonServer(settings)
    http = f"{settings.host}:{settings.http_port}"

    def failure() -> str | None:
        if server.process is None or server.process.poll() is not None:
            return f"tritonserver exited:\n{server.log_tail()}"
        return None

    print(f"starting tritonserver on {args.repository} ...", file=sys.stderr)
    return _serve_until_stopped(
        lambda: server.start(args.timeout),
        server.stop,
        f"ready: gRPC {settings.grpc_url}  HTTP {http}  metrics {settings.metrics_url}",
        failure,
        "tritonserver",
    )


def run_serve_openai(args: argparse.Namespace, model_dir: str) -> int:
    build = str(args.build.resolve()) if args.build else ""
    servable = RepositorySettings(model_dir, args.backend, build, args.dtype, args.device)
    check_servable(replace(servable, compile=compile_setting(args.compile), stream_interval_ms=args.stream_interval_ms))
    options = ["--model", model_dir, "--backend", args.backend, "--dtype", args.dtype, "--device", args.device]
    options += ["--default-mode", args.default_mode, "--max-batch", str(args.max_batch)]
    options += ["--kv-blocks", str(args.kv_blocks), "--auto-threshold", str(args.auto_threshold)]
    options += ["--stream-interval-ms", str(args.stream_interval_ms)]
    if args.compile is not None:
        options.append("--compile" if args.compile else "--no-compile")
    if build:
        options += ["--build", build]
    settings = OpenAISettings(
        name=args.name or default_served_name(model_dir),
        worker_options=tuple(options),
        workers=args.workers,
        router=args.router,
        host=args.host,
        http_port=args.http_port,
        migration_limit=args.migration_limit,
    )
    server = OpenAIServer(settings)
    reported: set[str] = set()

    def failure() -> str | None:
        dead = server.exited()
        if any(name.startswith("frontend") for name in dead) or len(dead) >= settings.workers:
            return f"{', '.join(dead)} exited; stopping"
        for name in set(dead) - reported:
            print(
                f"nld: warning: {name} exited; {settings.workers - len(dead)} of {settings.workers} serve",
                file=sys.stderr,
            )
        reported.update(dead)
        return None

    def start() -> None:
        server.start(args.timeout)
        for worker in server.workers:
            print(f"worker {worker.index}: pid {worker.process.pid}, metrics {worker.metrics_url}", file=sys.stderr)

    print(f"starting {settings.workers} worker(s) and the Dynamo frontend for {settings.name} ...", file=sys.stderr)
    return _serve_until_stopped(start, server.stop, f"ready: {settings.url}", failure, "serve-openai")


def _serve_until_stopped(
    start: Callable[[], object], stop: Callable[[], None], ready: str, failure: Callable[[], str | None], what: str
) -> int:
    """Start, print the `ready` line, poll `failure` until Ctrl-C or SIGTERM, stop. Exit codes: 0 when
    stopped, 1 when `failure` said why, 130 when stopped while starting."""
    serving, stopping = threading.Event(), threading.Event()

    def on_signal(*_: object) -> None:
        if not serving.is_set():  # still starting: start() stops what it started
            raise KeyboardInterrupt
        stopping.set()

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, on_signal)
    try:
        start()
    except KeyboardInterrupt:
        print(f"{what} stopped", file=sys.stderr)
        return 130
    serving.set()
    try:
        print(ready, flush=True)
        print("Ctrl-C stops the server", file=sys.stderr, flush=True)
        while not stopping.wait(1.0):
            problem = failure()
            if problem is not None:
                print(f"nld: error: {problem}", file=sys.stderr)
                return 1
    finally:
        for number in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not cut the stop short
            signal.signal(number, signal.SIG_IGN)
        stop()
        print(f"{what} stopped", file=sys.stderr)
    return 0


def _mode_label(asked: str | None, ran: str | None) -> str:
    """`ar`, `auto -> linear-spec`, `server default -> linear-spec`."""
    asked = asked or "server default"
    if ran is None or ran == asked:
        return asked
    return f"{asked} -> {ran}"


def run_client(args: argparse.Namespace) -> int:
    options = {
        "input_ids": args.prompt_ids,
        "messages": json.dumps(read_messages(args.messages)) if args.messages is not None else None,
        "mode": args.mode,
        "max_tokens": args.max_tokens,
        "stream": not args.no_stream,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "seed": args.seed,
        "block_length": args.block_length,
        "threshold": args.threshold,
        "stop_words": args.stop,
        "repetition_penalty": args.repetition_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "top_logprobs": args.logprobs,
    }
    show = None if args.json else (lambda piece: print(piece, end="", flush=True))
    with NLDClient(args.url) as client:
        client.check_live()
        result = client.generate(args.prompt, on_piece=show, **options)
    if args.json:
        print(json.dumps(result.__dict__))
    else:
        print()
        print(
            f"[{_mode_label(args.mode, result.mode)}] {len(result.output_ids)} tokens, {result.forwards} forwards "
            f"({result.tokens_per_forward:.3f} tokens/forward), nfe {result.nfe} ({result.finish_reason})",
            file=sys.stderr,
        )
        print_logprobs(result.output_ids, result.logprobs, result.top_logprobs)
    return 0
