"""A Triton gRPC client for the nld model: streamed generation with text pieces as they become final."""

from __future__ import annotations

import contextlib
import queue
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nld.errors import NLDError
from nld.serving.inputs import INPUTS
from nld.serving.repository import MODEL_NAME

NUMPY_TYPES = {
    "TYPE_STRING": np.object_,
    "TYPE_INT32": np.int32,
    "TYPE_FP32": np.float32,
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT64": np.uint64,
}


@dataclass
class ClientResult:
    """The concatenated answer, the pieces as they arrived, and the final response's stats."""

    text: str = ""
    output_ids: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    nfe: int | None = None
    tokens_per_forward: float | None = None
    forwards: int | None = None
    acceptance_lengths: list[int] = field(default_factory=list)
    mode: str | None = None  # the mode that ran (what `auto` chose)
    logprobs: list[float] = field(default_factory=list)  # per output id, when asked for
    top_logprobs: list[list[tuple[int, float]]] = field(default_factory=list)  # per output id: (id, logprob)

    def add_logprobs(self, response: Any) -> None:
        """Append the log-probabilities a response carries (none unless the request asked for them)."""
        chosen = response.as_numpy("output_log_probs")
        if chosen is None:
            return
        self.logprobs += chosen.reshape(-1).tolist()
        ids, values = response.as_numpy("output_top_logprob_ids"), response.as_numpy("output_top_logprobs")
        for id_row, value_row in zip(ids.tolist(), values.tolist(), strict=True):
            self.top_logprobs.append(list(zip(id_row, value_row, strict=True)))


def build_inputs(values: dict[str, Any]) -> list[Any]:
    """InferInputs of shape [1, 1] (batch of one) for every given request value, typed from the input table."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import np_to_triton_dtype

    inputs = []
    for name, value in values.items():
        if value is None:
            continue
        if name not in INPUTS:
            raise NLDError(f"unknown request input '{name}'; known: {', '.join(INPUTS)}")
        numpy_type = NUMPY_TYPES[INPUTS[name].triton_type]
        if INPUTS[name].dims != "1":  # a list (input_ids, stop_words): shape [1, N]
            items = [item.encode("utf-8") if isinstance(item, str) else item for item in value]
            data = np.array([items], dtype=numpy_type)
        else:
            data = np.array([[value.encode("utf-8") if isinstance(value, str) else value]], dtype=numpy_type)
        tensor = grpcclient.InferInput(name, list(data.shape), np_to_triton_dtype(data.dtype))
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    return inputs


def _short(error: BaseException) -> str:
    text = error.message() if hasattr(error, "message") else str(error)
    return text.splitlines()[0] if text else type(error).__name__


def _is_final(result: Any) -> bool:
    parameters = result.get_response().parameters
    return "triton_final_response" in parameters and parameters["triton_final_response"].bool_param


class NLDClient:
    """One gRPC connection; `generate` streams a request and collects its responses. The stream stays
    open from one request to the next (opening one costs ~3 ms a request); a request given up on closes
    it, cancelling the request, and the next request opens another. One request at a time per client."""

    def __init__(self, url: str = "127.0.0.1:8001") -> None:
        import tritonclient.grpc as grpcclient

        self.url = url
        self.client = grpcclient.InferenceServerClient(url)
        self._responses: queue.Queue[tuple[Any, Any]] | None = None  # the open stream's, None: none open

    def check_live(self, timeout: float = 10.0) -> None:
        """NLDError naming the URL when no server answers there."""
        try:
            live = self.client.is_server_live(client_timeout=timeout)
        except Exception as error:  # tritonclient raises its own exception with a gRPC status
            raise NLDError(f"no Triton server answers at {self.url} ({_short(error)}); is nld serve running?") from None
        if not live:
            raise NLDError(f"the server at {self.url} is not live")

    def close(self) -> None:
        self._close_stream(cancel=False)
        self.client.close()

    def _send(self, inputs: list[Any]) -> None:
        self.client.async_stream_infer(
            MODEL_NAME, inputs, request_id=uuid.uuid4().hex, enable_empty_final_response=True
        )

    def _stream(self) -> queue.Queue[tuple[Any, Any]]:
        """The open stream's responses, opening a stream when none is open (or when the open one heard
        something between requests: after a request's final response, only a stream error comes)."""
        if self._responses is not None and not self._responses.empty():
            self._close_stream(cancel=True)
        if self._responses is None:
            responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
            self.client.start_stream(callback=lambda result, error: responses.put((result, error)))
            self._responses = responses
        return self._responses

    def _close_stream(self, cancel: bool) -> None:
        from tritonclient.utils import InferenceServerException

        if self._responses is not None:
            self._responses = None
            with contextlib.suppress(InferenceServerException):  # a stream that broke: nothing to stop
                self.client.stop_stream(cancel_requests=cancel)

    def __enter__(self) -> NLDClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def generate(
        self,
        text: str | None,
        on_piece: Callable[[str], None] | None = None,
        timeout: float = 300.0,
        on_ids: Callable[[list[int]], None] | None = None,
        cancel_after: int | None = None,
        **options: Any,
    ) -> ClientResult:
        """Send one request (options: the request inputs, e.g. mode="ar", max_tokens=64, stream=False;
        `text=None` with input_ids=[...] sends a token-id prompt).
        `on_ids` hears the token ids of each response as it arrives.
        `cancel_after` closes the stream after that many responses (request cancellation). Raises
        NLDError with the server's message for a refused request."""
        from tritonclient.utils import InferenceServerException

        inputs = build_inputs({"text_input": text, **options} if text is not None else options)
        reused = self._responses is not None
        responses = self._stream()
        result = ClientResult()
        finished = False
        try:
            try:
                self._send(inputs)
            except InferenceServerException:
                if not reused:
                    raise
                self._close_stream(cancel=True)  # the stream broke while idle (a restart): open another, once
                responses = self._stream()
                self._send(inputs)
            while True:
                try:
                    response, error = responses.get(timeout=timeout)
                except queue.Empty:
                    raise NLDError(f"no response from {self.url} within {timeout:.0f} s") from None
                if error is not None:
                    raise NLDError(f"server error: {error.message() if hasattr(error, 'message') else error}")
                piece = response.as_numpy("text_output")
                if piece is not None:
                    text_piece = piece.reshape(-1)[0].decode("utf-8")
                    ids = response.as_numpy("output_ids")
                    result.pieces.append(text_piece)
                    result.text += text_piece
                    new_ids = [] if ids is None else ids.reshape(-1).tolist()
                    result.output_ids += new_ids
                    result.add_logprobs(response)
                    if on_piece is not None:
                        on_piece(text_piece)
                    if on_ids is not None:
                        on_ids(new_ids)
                reason = response.as_numpy("finish_reason")
                if reason is not None:
                    result.finish_reason = reason.reshape(-1)[0].decode("utf-8")
                    result.nfe = int(response.as_numpy("nfe").reshape(-1)[0])  # type: ignore[union-attr]
                    result.tokens_per_forward = float(response.as_numpy("tokens_per_forward").reshape(-1)[0])  # type: ignore[union-attr]
                    result.forwards = int(response.as_numpy("forwards").reshape(-1)[0])  # type: ignore[union-attr]
                    ran = response.as_numpy("decoded_mode")
                    result.mode = None if ran is None else ran.reshape(-1)[0].decode("utf-8")
                    result.acceptance_lengths = response.as_numpy("acceptance_lengths").reshape(-1).tolist()  # type: ignore[union-attr]
                if _is_final(response):
                    break
                if cancel_after is not None and len(result.pieces) >= cancel_after:
                    result.finish_reason = "cancelled"
                    return result
            finished = True
        finally:  # a request given up on (timeout, error, exception) is cancelled, not waited for
            if not finished:
                self._close_stream(cancel=True)
        return result


def read_metrics(url: str) -> dict[str, float]:
    """The nld_* samples of a Prometheus text endpoint, keyed by metric name with its labels."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        lines = response.read().decode().splitlines()
    samples = {}
    for line in lines:
        if line.startswith("nld_"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples
