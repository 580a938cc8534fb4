"""The NVIDIA Dynamo worker: a thin adapter between Dynamo's token-level requests and the nld engine.

One process serves one model on one batching `Engine`, registered for Dynamo's OpenAI frontend as a
token-in/token-out Completions + Chat model under one name per decoding mode (`served_names`: `<name>`
for the default mode, `<name>:ar`, ...), each on its own endpoint `<namespace>.<component>.generate[_mode]`.
The frontend renders the chat template, tokenizes and detokenizes; the worker streams the token ids
that became final (with their log-probabilities when asked). Stop strings are matched by the frontend
and by the engine, so a request's compute ends at the token that completes one.
Run: `python -m nld.serving.dynamo_worker [--model DIR] [--backend torch] ...` with the same
`DYN_FILE_KV` folder as `python -m dynamo.frontend --discovery-backend file --request-plane tcp
--event-plane zmq` (`nld serve-openai` starts both). Fields the OpenAI API lacks come as
`nvext.annotations` strings `key=value` (`block_length=32`, `threshold=0.9`). Bad parameters become
Dynamo's `InvalidArgument` (HTTP 400) naming the OpenAI field (`max_tokens` for our `max_new_tokens`).
With `--status-port` the worker's status server serves /health and /metrics, the engine's own included.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from nld.chat_template import PLAIN_CHAT_TEMPLATE, TEMPLATE_FILE, load_chat_template
from nld.engine import Engine, EngineSettings, Update
from nld.errors import NLDError
from nld.generate import load_backend
from nld.limits import ParameterError
from nld.modes import GenerationParams
from nld.sampling import TokenLogprob
from nld.serving.inputs import REQUEST_MODES
from nld.serving.metrics import engine_samples, prometheus_text
from nld.serving.outbox import Outbox
from nld.serving.repository import STREAM_INTERVAL_MS, check_stream_interval
from nld.serving.served_names import default_served_name, endpoint_name, served_names
from nld.step import StepBackend
from nld.tokenizer import NLDTokenizer

LOG = logging.getLogger("nld.dynamo")
DEFAULT_MODE = "linear-spec"  # `nld generate`'s default
OPENAI_NAMES = {  # ours -> the OpenAI field
    "max_new_tokens": "max_tokens",
    "eos_token_ids": "stop_token_ids",
    "logprobs": "logprobs",
}
ANNOTATION_FIELDS: dict[str, Callable[[str], Any]] = {"block_length": int, "threshold": float}
FINISH_REASONS = {"stop": "eos", "length": "length", "cancelled": "cancelled", "error": "error"}
# Request fields the engine does not implement: refused by name rather than ignored.
# (section of Dynamo's request, field, OpenAI name); a field counts as set unless None/False/0 (n: 1).
UNSUPPORTED = (
    ("sampling_options", "n", "n"),
    ("sampling_options", "best_of", "best_of"),
    ("sampling_options", "use_beam_search", "use_beam_search"),
    ("sampling_options", "guided_decoding", "response_format"),
    ("output_options", "prompt_logprobs", "prompt_logprobs (echo)"),
    ("stop_conditions", "min_tokens", "min_tokens"),
    ("stop_conditions", "ignore_eos", "ignore_eos"),
)
NEUTRAL_VALUES = {"n": (1,), "best_of": (1,)}


def special_affixes(tokenizer: NLDTokenizer) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's post-processor adds before and after a text (e.g. BOS): Dynamo encodes
    without them, `NLDTokenizer.encode_prompt` (and so `nld generate`) with them."""
    plain = tokenizer.tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.tokenizer.encode("a", add_special_tokens=True).ids
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def chat_template_file(model_dir: str) -> str | None:
    """The template file for Dynamo to render chats with: the checkpoint's chat_template.jinja, none
    when tokenizer_config.json holds the template (Dynamo reads it there), else nld's plain one."""
    if (Path(model_dir) / TEMPLATE_FILE).is_file():
        return str(Path(model_dir) / TEMPLATE_FILE)
    return None if load_chat_template(model_dir) is not None else str(PLAIN_CHAT_TEMPLATE)


def refuse_unsupported(request: dict[str, Any]) -> None:
    """ParameterError naming the first field of UNSUPPORTED the request sets."""
    for section, key, name in UNSUPPORTED:
        value = (request.get(section) or {}).get(key)
        if value in (None, False, 0, [], {}) or value in NEUTRAL_VALUES.get(key, ()):
            continue
        raise ParameterError(name, f"not supported by nld yet (got {value!r})")


def parse_annotations(annotations: list[str] | None) -> dict[str, Any]:
    """`["block_length=32", "threshold=0.9"]` -> {"block_length": 32, "threshold": 0.9}; other annotations
    (Dynamo's own, without `=` or with another key) are left to Dynamo."""
    values: dict[str, Any] = {}
    for item in annotations or ():
        key, sep, text = str(item).partition("=")
        if not sep or key not in ANNOTATION_FIELDS:
            continue
        try:
            values[key] = ANNOTATION_FIELDS[key](text)
        except ValueError:
            raise ParameterError(key, f"cannot parse {text!r} as {ANNOTATION_FIELDS[key].__name__}") from None
    return values


def logprob_fields(logprobs: list[TokenLogprob], top: int) -> dict[str, Any]:
    """Dynamo's chunk fields for some tokens' log-probabilities: `log_probs` (one per token) and, when
    the request asked for alternatives, `top_logprobs` (exactly `top` ranked entries per token)."""
    fields: dict[str, Any] = {"log_probs": [entry.logprob for entry in logprobs]}
    if top:
        fields["top_logprobs"] = [
            [
                {"rank": rank, "token_id": token, "logprob": value}
                for rank, (token, value) in enumerate(entry.top[:top], start=1)
            ]
            for entry in logprobs
        ]
    return fields


@dataclasses.dataclass(eq=False)
class _Chunks:
    """Where one request's updates go: its handler's queue, on the handler's event loop."""

    loop: asyncio.AbstractEventLoop
    updates: asyncio.Queue[Update]

    def deliver(self, update: Update) -> None:
        """On the outbox's thread: wake the handler once per (joined) update."""
        self.loop.call_soon_threadsafe(self.updates.put_nowait, update)


class NLDHandler:
    """Turns one Dynamo request into one engine submission in `mode` and streams its updates back."""

    def __init__(
        self, engine: Engine, tokenizer: NLDTokenizer | None, outbox: Outbox[_Chunks], mode: str = DEFAULT_MODE
    ) -> None:
        self.engine = engine
        self.mode = mode
        self.outbox = outbox  # a request's updates reach its event loop through it, at most once per interval
        self.prefix, self.suffix = special_affixes(tokenizer) if tokenizer is not None else ([], [])

    def prompt_ids(self, token_ids: list[int]) -> list[int]:
        """Dynamo's prompt ids with the post-processor's specials, as `encode_prompt` would give them."""
        ids = list(token_ids)
        if self.prefix and ids[: len(self.prefix)] != self.prefix:
            ids = self.prefix + ids
        if self.suffix and ids[len(ids) - len(self.suffix) :] != self.suffix:
            ids = ids + self.suffix
        return ids

    def parse(self, request: dict[str, Any]) -> tuple[list[int], str, GenerationParams]:
        """(prompt ids, mode, params) of a Dynamo request; ParameterError when out of bounds."""
        refuse_unsupported(request)
        sampling = request.get("sampling_options") or {}
        stops = request.get("stop_conditions") or {}
        extra = parse_annotations(request.get("annotations"))
        prompt_ids = self.prompt_ids(request.get("token_ids") or [])
        fields: dict[str, Any] = {
            "temperature": sampling.get("temperature"),
            "top_p": sampling.get("top_p"),
            "top_k": None if sampling.get("top_k") == -1 else sampling.get("top_k"),  # -1: off (vLLM's spelling)
            "min_p": sampling.get("min_p"),
            "seed": sampling.get("seed"),
            "max_new_tokens": stops.get("max_tokens"),
            "block_length": extra.get("block_length"),
            "threshold": extra.get("threshold"),
            "repetition_penalty": sampling.get("repetition_penalty"),
            "presence_penalty": sampling.get("presence_penalty"),
            "frequency_penalty": sampling.get("frequency_penalty"),
            "logprobs": (request.get("output_options") or {}).get("logprobs"),
            "stop": tuple(stops.get("stop") or ()) or None,
        }
        stop_ids = stops.get("stop_token_ids")
        if stop_ids:  # besides the model's own EOS ids, as vLLM takes them
            eos = request.get("eos_token_ids") or self.engine.backend.config.eos_token_ids
            fields["eos_token_ids"] = tuple(dict.fromkeys([*eos, *stop_ids]))
        params = GenerationParams(**{name: value for name, value in fields.items() if value is not None})
        if stops.get("max_tokens") is None:  # bound the default by the context, as the frontend does not
            room = self.engine.backend.config.max_position_embeddings - len(prompt_ids)
            params = dataclasses.replace(params, max_new_tokens=max(1, min(params.max_new_tokens, room)))
        return prompt_ids, self.mode, params

    async def generate(self, request: dict[str, Any], context: Any) -> AsyncIterator[dict[str, Any]]:
        """Dynamo's handler: yields {"token_ids": [...]} chunks, the last with finish_reason and usage."""
        from dynamo.llm.exceptions import InvalidArgument

        chunks = _Chunks(asyncio.get_running_loop(), asyncio.Queue())
        try:
            prompt_ids, mode, params = self.parse(request)
            self.engine.submit(
                prompt_ids, mode, params, lambda update: self.outbox.put(chunks, update), context.is_stopped
            )
        except ParameterError as error:
            raise InvalidArgument(f"{OPENAI_NAMES.get(error.field, error.field)}: {error.problem}") from None
        produced = 0
        while True:
            update = await chunks.updates.get()
            produced += len(update.new_ids)
            chunk: dict[str, Any] = {"token_ids": update.new_ids}
            if update.logprobs is not None and update.new_ids:
                chunk.update(logprob_fields(update.logprobs, params.logprobs or 0))
            if update.error is not None:
                if update.new_ids:  # tokens final before the failure, as they would have streamed
                    yield chunk
                raise RuntimeError(f"generation failed: {update.error}")
            if update.finished:
                reason = update.generation.finish_reason if update.generation else None
                chunk["finish_reason"] = FINISH_REASONS.get(reason or "", "length")
                chunk["completion_usage"] = {
                    "prompt_tokens": len(prompt_ids),
                    "completion_tokens": produced,
                    "total_tokens": len(prompt_ids) + produced,
                }
                yield chunk
                return
            yield chunk


async def serve(args: argparse.Namespace) -> None:
    """Load the model, start the engine, register every served name with Dynamo's discovery and serve
    until stopped."""
    if args.status_port is not None:  # read by the runtime when it starts: must be set before
        os.environ["DYN_SYSTEM_PORT"] = str(args.status_port)
    from dynamo.llm import ModelInput, ModelRuntimeConfig, ModelType, WorkerType, register_model
    from dynamo.runtime import DistributedRuntime

    tokenizer = NLDTokenizer.from_dir(args.model)
    if tokenizer is None:
        raise SystemExit(f"{args.model}: no tokenizer.json; Dynamo's frontend tokenizes with it")
    template = chat_template_file(args.model)
    settings = EngineSettings(max_batch=args.max_batch, kv_blocks=args.kv_blocks, auto_threshold=args.auto_threshold)
    outbox: Outbox[_Chunks] = Outbox(_Chunks.deliver, args.stream_interval_ms / 1000)

    def load() -> StepBackend:
        return load_backend(
            args.model, args.backend, args.dtype, args.device, build_dir=args.build, compile=args.compile
        )

    # text for stop strings only; loaded, warmed up (every compiled step shape) and stepped on one thread
    engine, compiling = Engine.launch(load, settings, tokenizer.tokenizer, wants_text=False)
    backend = engine.backend
    if compiling:
        LOG.info("compiled the engine's step shapes in %.1f s", compiling)
    loop = asyncio.get_running_loop()
    runtime = DistributedRuntime(loop, args.discovery_backend, "tcp", event_plane="zmq")
    runtime_config = ModelRuntimeConfig()
    runtime_config.context_length = backend.config.max_position_embeddings
    runtime_config.max_num_seqs = settings.max_batch
    served = []
    for name, mode in served_names(args.name).items():
        endpoint = runtime.endpoint(f"{args.namespace}.{args.component}.{endpoint_name(mode)}")
        await register_model(
            ModelInput.Tokens,
            ModelType.Completions | ModelType.Chat,
            endpoint,
            args.model,
            name,
            worker_type=WorkerType.Aggregated,
            kv_cache_block_size=settings.kv_block_tokens,
            runtime_config=runtime_config,
            custom_template_path=template,
        )
        served.append((endpoint, NLDHandler(engine, tokenizer, outbox, mode or args.default_mode)))
    served[0][0].metrics.register_prometheus_expfmt_callback(lambda: prometheus_text(engine_samples(engine)))
    LOG.info("serving %s as %s (+ :mode names) in namespace %s", args.model, args.name, args.namespace)
    try:
        await asyncio.gather(*(endpoint.serve_endpoint(handler.generate) for endpoint, handler in served))
    finally:
        try:
            engine.stop()
        finally:
            outbox.close()


def argument_parser() -> argparse.ArgumentParser:
    """The worker's command line (also what deploy/ manifests are checked against)."""
    parser = argparse.ArgumentParser(prog="python -m nld.serving.dynamo_worker", description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="NLD checkpoint folder (default: the built-in tiny model)")
    parser.add_argument("--build", help="an nld-build output, for the onnxruntime/tensorrt backends")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch: compiled decode steps")
    parser.add_argument(
        "--name", help="served model name (default: nld-tiny for the built-in model, else the folder's)"
    )
    parser.add_argument("--namespace", default="nld")
    parser.add_argument("--component", default="backend")
    parser.add_argument("--default-mode", choices=list(REQUEST_MODES), default=DEFAULT_MODE)
    parser.add_argument("--auto-threshold", type=int, default=EngineSettings.auto_threshold)
    parser.add_argument("--stream-interval-ms", type=int, default=STREAM_INTERVAL_MS)
    parser.add_argument("--status-port", type=int, help="serve /health and /metrics on this port")
    parser.add_argument("--max-batch", type=int, default=EngineSettings.max_batch)
    parser.add_argument("--kv-blocks", type=int, default=EngineSettings.kv_blocks)
    parser.add_argument(
        "--discovery-backend",
        choices=["file", "etcd", "kubernetes", "mem"],
        default=os.environ.get("DYN_DISCOVERY_BACKEND", "file"),
        help="as the frontend's (default: $DYN_DISCOVERY_BACKEND or file)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    from nld.models import default_model_dir

    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.status_port is not None and not 0 < args.status_port < 32768:
        parser.error(f"--status-port must be in [1, 32767] (Dynamo reads it as an i16), got {args.status_port}")
    try:
        check_stream_interval(args.stream_interval_ms)
    except NLDError as error:
        parser.error(str(error))
    args.model = str(args.model or default_model_dir())
    args.name = args.name or default_served_name(args.model)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
