"""The Triton Python-backend model: a thin adapter between Triton requests and the nld engine.

Loaded by `triton_repo/nld/1/model.py` inside tritonserver's Python-backend stub, where
`triton_python_backend_utils` exists. Decoupled: each request gets a stream of responses, each one
carrying the text that became final since the last, and a final response with the stats.
"""

from __future__ import annotations

import contextlib
import json
import locale
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nld.engine import Engine, EngineSettings, Update
from nld.errors import ConfigError
from nld.generate import load_backend
from nld.limits import ParameterError, max_prompt_bytes
from nld.sampling import TokenLogprob
from nld.serving.inputs import INPUTS, PROMPT_INPUTS, InputError, ServeRequest, input_error, parse_inputs
from nld.serving.metrics import METRICS, MODE_LABEL, engine_samples
from nld.serving.outbox import Outbox
from nld.serving.repository import COMPILE_SETTINGS, STREAM_INTERVAL_MS, check_stream_interval
from nld.step import StepBackend
from nld.tokenizer import NLDTokenizer

# How often a running request asks tritonserver whether its client cancelled: the question is a round
# trip to the parent process, too dear for every step of every request.
CANCEL_CHECK_SECONDS = 0.02


@dataclass(eq=False)
class _Reply:
    """Where a request's responses go (hashed by identity: the outbox's key)."""

    sender: Any
    stream: bool
    width: int  # top log-probabilities per token


def at_most_every(seconds: float, check: Callable[[], bool]) -> Callable[[], bool]:
    """`check`, asked at most once per `seconds` (a sticky yes: a cancelled request stays cancelled)."""
    asked_at = -math.inf
    answer = False

    def throttled() -> bool:
        nonlocal asked_at, answer
        now = time.monotonic()
        if not answer and now - asked_at >= seconds:
            asked_at, answer = now, check()
        return answer

    return throttled


def _parameters(model_config: dict) -> dict[str, str]:
    return {key: value["string_value"] for key, value in model_config.get("parameters", {}).items()}


def logprob_tensors(pb: Any, logprobs: list[TokenLogprob], width: int) -> list[Any]:
    """output_log_probs [T], output_top_logprob_ids and output_top_logprobs [T, n] of some tokens (T may
    be 0: the shapes stay [0, n], so responses concatenate)."""
    top = [entry.top for entry in logprobs]
    ids = np.array([[token for token, _ in row] for row in top], dtype=np.int32).reshape(len(top), width)
    values = np.array([[value for _, value in row] for row in top], dtype=np.float32).reshape(len(top), width)
    return [
        pb.Tensor("output_log_probs", np.array([entry.logprob for entry in logprobs], dtype=np.float32)),
        pb.Tensor("output_top_logprob_ids", ids),
        pb.Tensor("output_top_logprobs", values),
    ]


def utf8_text_files() -> None:
    """Read text files as UTF-8 by default. Triton's embedded Python stub starts with an ASCII locale
    whatever the environment says, and torch.compile reads UTF-8 templates with open()'s default."""
    if locale.getpreferredencoding(False).lower().replace("-", "") != "utf8":
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_CTYPE, "C.UTF-8")


class TritonPythonModel:
    """Triton's Python-backend entry points: initialize, execute, finalize."""

    def initialize(self, args: dict[str, Any]) -> None:
        import triton_python_backend_utils as pb_utils

        utf8_text_files()

        self.pb = pb_utils
        parameters = _parameters(json.loads(args["model_config"]))
        repository = Path(args["model_repository"]).parent  # relative paths (a build's) start here
        model_dir = str(repository / parameters["model_dir"])
        build_dir = parameters.get("build_dir")
        self.tokenizer = NLDTokenizer.from_dir(model_dir)  # None: token-id prompts only, empty text_output
        settings = EngineSettings(
            max_batch=int(parameters["max_batch"]),
            kv_blocks=int(parameters["kv_blocks"]),
            kv_block_tokens=int(parameters["kv_block_tokens"]),
            auto_threshold=int(parameters["auto_threshold"]),
        )
        self.default_mode = parameters["default_mode"]
        self.default_max_tokens = int(parameters["default_max_tokens"])

        def load() -> StepBackend:
            return load_backend(
                model_dir,
                parameters["backend"],
                parameters["dtype"],
                parameters["device"],
                build_dir=str(repository / build_dir) if build_dir else None,
                compile=COMPILE_SETTINGS[parameters.get("compile", "auto")],
            )

        # loaded, warmed up (every compiled step shape, not on a request's time) and stepped on one thread
        tokenizer = self.tokenizer.tokenizer if self.tokenizer is not None else None
        interval = int(parameters.get("stream_interval_ms", STREAM_INTERVAL_MS))
        check_stream_interval(interval)
        self.outbox: Outbox[_Reply] = Outbox(self._send, interval / 1000)
        self.engine, compiling = Engine.launch(load, settings, tokenizer)
        if compiling:
            pb_utils.Logger.log_info(f"nld: compiled the engine's step shapes in {compiling:.1f} s")
        context = self.engine.backend.config.max_position_embeddings
        self.context = context
        longest = self.tokenizer.longest_token_bytes() if self.tokenizer is not None else 1
        self.max_prompt_bytes = max_prompt_bytes(context, longest)
        self.families = {
            name: pb_utils.MetricFamily(name=name, description=text, kind=getattr(pb_utils.MetricFamily, kind))
            for name, (kind, text) in METRICS.items()
        }
        self.metrics: dict[tuple[str, str], Any] = {}
        self.metrics_lock = threading.Lock()
        self.reported: dict[tuple[str, str], float] = {}
        self._publish_metrics()

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            self._start(request)
        return None  # decoupled: responses go through each request's sender

    def finalize(self) -> None:
        try:
            self.engine.stop()
        finally:
            self.outbox.close()

    # -- one request --------------------------------------------------------------------------------
    def _start(self, request: Any) -> None:
        sender = request.get_response_sender()
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        prompt_input = "text_input"
        try:
            tensors = {}
            for name in INPUTS:
                tensor = self.pb.get_input_tensor_by_name(request, name)
                tensors[name] = None if tensor is None else tensor.as_numpy()
            parsed = parse_inputs(
                tensors, self.default_mode, self.default_max_tokens, self.max_prompt_bytes, self.context
            )
            prompt_input = next(name for name in PROMPT_INPUTS if tensors.get(name) is not None)
            prompt_ids = self._prompt_ids(parsed, prompt_input)
            reply = _Reply(sender, parsed.stream, parsed.params.logprobs or 0)
            gathered = Update("", [], logprobs=[] if parsed.params.logprobs is not None else None)

            def listen(update: Update) -> None:  # on the engine's thread: hand over, never wait on a send
                if reply.stream:
                    self.outbox.put(reply, update)
                    return
                gathered.absorb(update)  # unstreamed: one response at the end, with everything
                if update.finished:
                    self.outbox.put(reply, gathered)

            cancelled = at_most_every(CANCEL_CHECK_SECONDS, request.is_cancelled)
            self.engine.submit(prompt_ids, parsed.mode, parsed.params, listen, cancelled)
        except InputError as error:
            sender.send(self.pb.InferenceResponse(error=self.pb.TritonError(str(error))), flags=final)
        except ParameterError as error:  # the engine's model-dependent bounds, under the input's name
            problem = str(input_error(error, prompt_input))
            sender.send(self.pb.InferenceResponse(error=self.pb.TritonError(problem)), flags=final)
        except Exception as error:  # a request the engine refuses must not take the model down
            sender.send(self.pb.InferenceResponse(error=self.pb.TritonError(f"request refused: {error}")), flags=final)

    def _prompt_ids(self, parsed: ServeRequest, prompt_input: str) -> list[int]:
        if parsed.prompt_ids is not None:
            return parsed.prompt_ids  # as given, like TensorRT-LLM's input_ids: no BOS added
        if self.tokenizer is None:
            raise InputError(prompt_input, "this model has no tokenizer.json: send the prompt as input_ids")
        if parsed.messages is not None:
            try:
                return self.tokenizer.encode_messages(parsed.messages)
            except ConfigError as error:  # the template refused the conversation (raise_exception)
                raise InputError("messages", str(error)) from None
        assert parsed.text is not None
        return self.tokenizer.encode_prompt(parsed.text)

    def _send(self, reply: _Reply, update: Update) -> None:
        """Send one response (on the outbox's thread): a streamed piece, the error, or the final response
        with the request's stats (which, unstreamed, holds the whole output)."""
        final = self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if update.error is not None:
            if reply.stream and update.new_ids:  # tokens final before the failure, as they would have streamed
                try:
                    reply.sender.send(self._response(update.text, update.new_ids, update.logprobs, reply.width))
                except Exception as problem:  # the error response below must still go: it ends the request
                    self.pb.Logger.log_error(f"nld: sending the tokens before a failure failed: {problem}")
            reply.sender.send(self.pb.InferenceResponse(error=self.pb.TritonError(update.error)), flags=final)
            self._publish_metrics()
            return
        if not update.finished:
            reply.sender.send(self._response(update.text, update.new_ids, update.logprobs, reply.width))
            return
        generation = update.generation
        stats = {}
        if generation is not None:
            stats = {
                "finish_reason": generation.finish_reason or "",
                "nfe": generation.nfe,
                "tokens_per_forward": generation.tokens_per_forward,
                "forwards": generation.forwards,
                "acceptance_lengths": generation.acceptance_lengths,
                "decoded_mode": generation.mode,
            }
        response = self._response(update.text, update.new_ids, update.logprobs, reply.width, stats)
        reply.sender.send(response, flags=final)
        self._publish_metrics()

    def _response(
        self, piece: str, ids: list[int], logprobs: list[TokenLogprob] | None, width: int, stats: dict | None = None
    ) -> Any:
        tensors = [
            self.pb.Tensor("text_output", np.array([piece.encode("utf-8")], dtype=np.object_)),
            self.pb.Tensor("output_ids", np.array(ids, dtype=np.int32)),
        ]
        if logprobs is not None:
            tensors += logprob_tensors(self.pb, logprobs, width)
        if stats:
            tensors += [
                self.pb.Tensor("finish_reason", np.array([stats["finish_reason"].encode()], dtype=np.object_)),
                self.pb.Tensor("nfe", np.array([stats["nfe"]], dtype=np.int32)),
                self.pb.Tensor("tokens_per_forward", np.array([stats["tokens_per_forward"]], dtype=np.float32)),
                self.pb.Tensor("forwards", np.array([stats["forwards"]], dtype=np.int32)),
                self.pb.Tensor("acceptance_lengths", np.array(stats["acceptance_lengths"], dtype=np.int32)),
                self.pb.Tensor("decoded_mode", np.array([stats["decoded_mode"].encode()], dtype=np.object_)),
            ]
        return self.pb.InferenceResponse(output_tensors=tensors)

    # -- metrics ------------------------------------------------------------------------------------
    def _publish_metrics(self) -> None:
        values = engine_samples(self.engine)
        with self.metrics_lock:
            for (name, mode), value in values.items():
                metric = self.metrics.get((name, mode))
                if metric is None:
                    labels = {MODE_LABEL: mode} if mode else {}
                    metric = self.metrics[(name, mode)] = self.families[name].Metric(labels=labels)
                if METRICS[name][0] == "GAUGE":
                    metric.set(value)
                else:
                    metric.increment(value - self.reported.get((name, mode), 0))
                self.reported[(name, mode)] = value
