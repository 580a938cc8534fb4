"""Seeded fuzz of the request schema against the real tritonserver: random subsets of the inputs with
edge-heavy values, wrong shapes and wrong datatypes. Every case gets an error naming the input at fault
or a valid output; afterwards a normal request still gets its exact solo output and the KV pool is free."""

from __future__ import annotations

import json
import math
import queue
import random
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import np_to_triton_dtype

from nld.chat_template import check_messages
from nld.config import NLDConfig
from nld.generate import generate, load_backend
from nld.limits import (
    BLOCK_LENGTH_CAP,
    BOUNDS,
    EOS_ID,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    max_block_length,
    max_prompt_bytes,
)
from nld.models import default_model_dir
from nld.modes import GenerationParams
from nld.serving.client import NUMPY_TYPES, build_inputs
from nld.serving.inputs import INPUTS, PROMPT_INPUTS, REQUEST_MODES
from nld.serving.repository import MODEL_NAME, RepositorySettings, write_repository
from nld.serving.server import ServerSettings, TritonServer, free_port
from nld.tokenizer import NLDTokenizer
from tests.nld.helpers import wait_for_idle_pool

pytestmark = pytest.mark.server

SEEDS = (11, 22, 33)
CASES_PER_SEED = 100
PARALLEL = 4
CLIENT_TIMEOUT = 120.0  # seconds any one response may take
DEFAULT_MAX_TOKENS = 8  # the fuzz server's default, so a case without max_tokens stays small
KV_BLOCKS = 512
FORBIDDEN = ("request refused:", "step failed", "Traceback", "Exception")
F32_MAX = float(np.finfo(np.float32).max)

EDGE_SHARE = 0.25  # how often a value comes from its input's edge pool rather than the usual one
INF, NAN = math.inf, math.nan

# Per input: (usual values, edge values). Which ones are valid is the oracle's call (model_faults), not
# the pool's. max_tokens stays <= 16 when valid: its larger values all exceed the 1024-token context.
POOLS: dict[str, tuple[list[Any], list[Any]]] = {
    "text_input": (
        ["def f(x):", "class Stack:\n    def push(self, item):", "import os\n", "héllo wörld ☃ 日本", "x" * 200],
        [
            "",
            " ",
            "\t\n \r",
            "\x00",
            b"\xff",
            b"def f(x):\xc3",
            b"\xed\xa0\x80",  # a UTF-16 surrogate, invalid in UTF-8
            "a " * 1020,  # 1022 tokens: only max_tokens 1 or 2 still fit the context
            "a " * 3000,  # over the context in tokens, under the byte cap
            "x" * 90_000,  # over the byte cap: refused before tokenizing
        ],
    ),
    "input_ids": (
        [[1, 482, 796], [1, 5, 9, 13, 17], [482, 796, 11]],
        [[], [-1], [4096], [2**31 - 1], [1] * 1023, [1] * 1024, [1] * 2000],  # context 1024, vocab 4096
    ),
    "messages": (
        [
            '[{"role": "user", "content": "def f(x):"}]',
            '[{"role": "system", "content": "# a"}, {"role": "user", "content": "b"}]',
        ],
        ["", "not json", "[]", '[{"role": 1}]', '[{"role": "user", "content": 5}]', '{"role": "user"}'],
    ),
    "max_tokens": ([1, 2, 5, 8, 16], [0, -1, -(2**31), 2**31 - 1, 1023, 1024, 1025, 100_000]),
    "stream": ([True, True, False], []),
    "temperature": (
        [0.0, 0.0, 0.7, 1.0],
        [-0.0, MAX_TEMPERATURE, 100.0001, 1e-5, 1e-40, 1e-45, -1.0, -1e-40, INF, -INF, NAN, F32_MAX],
    ),
    "top_p": ([1.0, 0.9, 0.5], [1e-40, 1.0000001, 0.0, -0.0, -1.0, 2.0, INF, -INF, NAN, F32_MAX]),
    "top_k": ([0, 1, 5, 50], [-1, 4096, 10**6, 2**31 - 1, -(2**31)]),
    "min_p": ([0.0, 0.05, 0.2], [1.0, 1.0000001, -1e-40, -1.0, INF, NAN]),
    "seed": ([0, 1, 12345], [2**63, 2**64 - 1]),
    "end_id": ([2, 4095, 269], [0, 3, 4096, -1, 2**31 - 1, -(2**31)]),  # 3 is the mask id: never emitted
    "mode": (list(REQUEST_MODES), ["", "beam", "AR", " ar", "linear_spec", b"\xfe"]),
    "block_length": ([1, 2, 4, 8, 16], [32, 33, 64, 128, 129, 0, -1, 2**31 - 1, -(2**31)]),
    "threshold": ([0.0, 0.5, 0.9, 1.0], [1e-40, -1e-40, 1.0000001, -1.0, 2.0, INF, -INF, NAN, F32_MAX]),
    "stop_words": (
        [["\n"], ["return", ")"], ["xyz"], ["(", "é"]],
        [[""], ["x" * 256], ["x" * 257], ["a"] * 16, ["a"] * 17, [b"\xff"], ["ok", b"\xc3"]],
    ),
    "repetition_penalty": ([1.0, 1.2, 2.0], [1e-40, 0.0, -1.0, 10.0, 10.0001, INF, NAN, F32_MAX]),
    "presence_penalty": ([0.0, 0.5, -0.5], [2.0, -2.0, 2.0001, -2.5, INF, -INF, NAN]),
    "frequency_penalty": ([0.0, 0.5, 1.5], [2.0, -2.0, 2.0001, -2.5, INF, NAN]),
    "return_log_probs": ([True, False], []),
    "top_logprobs": ([0, 1, 5], [20, 21, -1, 2**31 - 1, -(2**31)]),
}
WRONG_TYPES = {  # Triton type -> (numpy type, Triton datatype) pairs it must refuse
    "TYPE_INT32": [(np.int64, "INT64"), (np.float32, "FP32"), (np.uint32, "UINT32")],
    "TYPE_FP32": [(np.float64, "FP64"), (np.float16, "FP16"), (np.int32, "INT32")],
    "TYPE_UINT64": [(np.int64, "INT64"), (np.uint32, "UINT32")],
    "TYPE_BOOL": [(np.int32, "INT32"), (np.uint8, "UINT8")],
    "TYPE_STRING": [(np.int32, "INT32"), (np.float32, "FP32")],
}
WRONG_SHAPES = [(1, 2), (1,), (1, 1, 1)]


@dataclass
class Case:
    """One request: well-typed values, plus at most one tampered tensor or unknown input."""

    name: str
    values: dict[str, Any]
    raw: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)  # name -> (data, Triton datatype)


@dataclass
class Reply:
    output_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    responses: int = 0
    error: str | None = None


def f32(value: float) -> float:
    return float(np.float32(value))


def draw_value(rng: random.Random, name: str) -> Any:
    """A value for input `name`: from its edge pool EDGE_SHARE of the time, else from its usual pool."""
    usual, edge = POOLS[name]
    return rng.choice(edge if edge and rng.random() < EDGE_SHARE else usual)


def tampered(rng: random.Random, name: str, value: Any) -> tuple[np.ndarray, str]:
    """`name`'s value as a tensor Triton itself refuses: a wrong datatype or a wrong shape."""
    triton_type = INPUTS[name].triton_type
    if rng.random() < 0.5 or INPUTS[name].dims != "1":  # any shape is a valid list: a wrong type
        numpy_type, datatype = rng.choice(WRONG_TYPES[triton_type])
        return np.ones((1, 1), dtype=numpy_type), datatype
    shape = rng.choice(WRONG_SHAPES)
    item = value.encode("utf-8") if isinstance(value, str) else value
    data = np.array([item] * math.prod(shape), dtype=NUMPY_TYPES[triton_type]).reshape(shape)
    return data, np_to_triton_dtype(data.dtype)


def draw_case(rng: random.Random, name: str) -> Case:
    """A random subset of the inputs; a prompt nearly always (text mostly, else token ids, now and then
    both or none); now and then a tampered tensor."""
    roll = rng.random()
    kinds = ((0.65, ["text_input"]), (0.8, ["input_ids"]), (0.9, ["messages"]), (0.95, ["text_input", "input_ids"]))
    prompt = next((names for limit, names in kinds if roll < limit), [])
    values = {name: draw_value(rng, name) for name in prompt}
    for input_name in INPUTS:
        if input_name not in PROMPT_INPUTS and rng.random() < 0.4:
            values[input_name] = draw_value(rng, input_name)
    case = Case(name, values)
    roll = rng.random()
    if roll < 0.12:
        target = rng.choice(list(INPUTS))
        case.raw[target] = tampered(rng, target, values.pop(target, draw_value(rng, target)))
    elif roll < 0.15:
        case.raw["unknown_input"] = (np.ones((1, 1), dtype=np.int32), "INT32")
    return case


def normal_case(prompt: str) -> Case:
    return Case("normal", {"text_input": prompt, "mode": "linear-spec", "max_tokens": 16})


def cases() -> Iterator[Case]:
    for seed in SEEDS:
        rng = random.Random(seed)
        for index in range(CASES_PER_SEED):
            yield draw_case(rng, f"seed {seed} case {index}")


# -- the oracle: which inputs a case gets wrong ------------------------------------------------------------
def out_of_bounds(field_name: str, value: float) -> bool:
    bound = BOUNDS[field_name]
    if not math.isfinite(value):
        return True
    low_ok = value > bound.low if bound.low_open else value >= bound.low
    return not (low_ok and value <= bound.high)


def valid_stop_words(words: list[str | bytes]) -> bool:
    if len(words) > MAX_STOP_STRINGS:
        return False
    for word in words:
        try:
            text = word.decode("utf-8") if isinstance(word, bytes) else word
        except UnicodeDecodeError:
            return False
        if not text or len(text) > MAX_STOP_CHARS:
            return False
    return True


def tensor_faults(case: Case) -> set[str]:
    """Inputs refused before any value is read: a tampered or unknown tensor (by tritonserver itself), a
    missing text_input (by tritonserver when nothing else is sent, else by the model)."""
    prompts = [name for name in PROMPT_INPUTS if name in case.values or name in case.raw]
    return set(case.raw) | (set() if prompts else {"text_input"})


def model_faults(case: Case, tokenizer: NLDTokenizer, config: NLDConfig) -> set[str]:
    """Inputs the nld model must refuse (any of them may be the one named); empty for a valid request."""
    values, bad = case.values, set()
    context, vocab = config.max_position_embeddings, config.vocab_size
    if sum(name in values for name in PROMPT_INPUTS) > 1:
        bad.add("text_input")  # two prompts: refused before anything else is read
    prompt_length = None
    if "messages" in values and len([name for name in PROMPT_INPUTS if name in values]) == 1:
        try:
            prompt_length = len(tokenizer.encode_messages(check_messages(json.loads(values["messages"]))))
        except (ValueError, TypeError):
            bad.add("messages")
        else:
            if prompt_length >= context:
                bad.add("messages")
    elif "input_ids" in values and "text_input" not in values:
        ids = values["input_ids"]
        if not ids or len(ids) >= context or min(ids) < 0 or max(ids) >= vocab:
            bad.add("input_ids")
        prompt_length = len(ids) or None
    elif "text_input" in values:
        text: str | None = None
        raw_text = values["text_input"]
        data = raw_text if isinstance(raw_text, bytes) else raw_text.encode("utf-8")
        if len(data) > max_prompt_bytes(context, tokenizer.longest_token_bytes()):
            bad.add("text_input")
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                bad.add("text_input")
        prompt_length = len(tokenizer.encode_prompt(text)) if text and text.strip() else None
        if text is not None and (prompt_length is None or prompt_length >= context):
            bad.add("text_input")
    mode = values.get("mode", "linear-spec")
    if isinstance(mode, bytes) or mode not in REQUEST_MODES:
        bad.add("mode")
    max_tokens = values.get("max_tokens", DEFAULT_MAX_TOKENS)
    fits = prompt_length is None or prompt_length >= context or prompt_length + max_tokens <= context
    if out_of_bounds("max_new_tokens", max_tokens) or not fits:
        bad.add("max_tokens")
    for name in ("temperature", "top_p", "threshold", "min_p", "repetition_penalty", "presence_penalty"):
        if name in values and out_of_bounds(name, f32(values[name])):
            bad.add(name)
    if "frequency_penalty" in values and out_of_bounds("frequency_penalty", f32(values["frequency_penalty"])):
        bad.add("frequency_penalty")
    if "top_logprobs" in values and out_of_bounds("logprobs", values["top_logprobs"]):
        bad.add("top_logprobs")
    if "stop_words" in values and not valid_stop_words(values["stop_words"]):
        bad.add("stop_words")
    if "top_k" in values and out_of_bounds("top_k", values["top_k"]):
        bad.add("top_k")
    if "end_id" in values and not (EOS_ID.low <= values["end_id"] < vocab):
        bad.add("end_id")
    block = values.get("block_length")
    if block is not None and out_of_bounds("block_length", block):
        bad.add("block_length")
    elif block is not None and "mode" not in bad:
        candidates = ("linear-spec", "ar") if mode == "auto" else (mode,)
        if any(name in BLOCK_LENGTH_CAP and block > max_block_length(config, name) for name in candidates):
            bad.add("block_length")
    return bad


# -- talking to the server ----------------------------------------------------------------------------------
def send(client: Any, case: Case) -> Reply:
    """Stream one case over gRPC (tritonclient) and read every response until the final one."""
    import tritonclient.grpc as grpcclient

    inputs = build_inputs(case.values)
    for name, (data, datatype) in case.raw.items():
        tensor = grpcclient.InferInput(name, list(data.shape), datatype)
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    responses: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    reply, done = Reply(), False
    try:
        client.async_stream_infer(MODEL_NAME, inputs, request_id=uuid.uuid4().hex, enable_empty_final_response=True)
        while True:
            try:
                result, error = responses.get(timeout=CLIENT_TIMEOUT)
            except queue.Empty:
                reply.error = f"hang: no response within {CLIENT_TIMEOUT:.0f} s"
                return reply
            if error is not None:
                reply.error, done = error.message() if hasattr(error, "message") else str(error), True
                return reply
            reply.responses += 1
            ids = result.as_numpy("output_ids")
            reply.output_ids += [] if ids is None else ids.reshape(-1).tolist()
            reason = result.as_numpy("finish_reason")
            if reason is not None:
                reply.finish_reason = reason.reshape(-1)[0].decode("utf-8")
            parameters = result.get_response().parameters
            if "triton_final_response" in parameters and parameters["triton_final_response"].bool_param:
                done = True
                return reply
    finally:  # a stream stopped without cancelling waits for its request to end: cancel one still running
        client.stop_stream(cancel_requests=not done)


def named_inputs(error: str, faults: set[str]) -> set[str]:
    """The inputs of `faults` that an error message names (ours: "input 'NAME': ...", or tritonserver's)."""
    named = {name for name in faults if f"input '{name}'" in error}
    if "text_input" in faults and "missing required input(s) ['text_input']" in error:
        named.add("text_input")
    return named


def check_reply(case: Case, reply: Reply, faults: set[str], config: NLDConfig) -> str | None:
    """Why the reply is wrong for a case whose faulty inputs are `faults` (any of them may be named)."""
    if reply.error is not None:
        if any(word in reply.error for word in FORBIDDEN) or reply.error.startswith("hang"):
            return f"bad error: {reply.error}"
        if not named_inputs(reply.error, faults):
            return f"error {reply.error!r} names none of {sorted(faults) or 'nothing (the case is valid)'}"
        return None
    if faults:
        return f"expected an error naming one of {sorted(faults)}, got output {reply.output_ids}"
    ids, max_tokens = reply.output_ids, case.values.get("max_tokens", DEFAULT_MAX_TOKENS)
    stop_ids = (case.values["end_id"],) if "end_id" in case.values else config.eos_token_ids
    if reply.finish_reason not in ("stop", "length"):
        return f"finish_reason {reply.finish_reason!r}"
    if any(not 0 <= token < config.vocab_size for token in ids) or len(ids) > max_tokens:
        return f"output {ids} outside the vocabulary or over {max_tokens} tokens"
    if config.mask_token_id in ids:
        return f"output {ids} holds the mask id {config.mask_token_id}"
    if reply.finish_reason == "length" and len(ids) != max_tokens:
        return f"finish_reason length after {len(ids)} of {max_tokens} tokens"
    stopped_by_text = "stop_words" in case.values  # a stop string ends the output at any token
    if reply.finish_reason == "stop" and not stopped_by_text and (not ids or ids[-1] not in stop_ids):
        return f"finish_reason stop without an end id {stop_ids} at the end of {ids}"
    if not case.values.get("stream", True) and reply.responses != 1:
        return f"stream=false gave {reply.responses} responses"
    return None


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerSettings]:
    """The built-in model behind its own tritonserver, whose default max_tokens is small."""
    settings = RepositorySettings(
        str(default_model_dir()), max_batch=8, kv_blocks=KV_BLOCKS, default_max_tokens=DEFAULT_MAX_TOKENS
    )
    repo = write_repository(tmp_path_factory.mktemp("fuzz") / "repo", settings)
    server = ServerSettings(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(server):
        yield server


def test_fuzzed_requests_get_named_errors_or_valid_outputs(fuzz_server: ServerSettings) -> None:
    import tritonclient.grpc as grpcclient

    backend = load_backend(str(default_model_dir()))
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    config = backend.config
    local, clients = threading.local(), []

    def run(case: Case) -> tuple[Case, set[str], Reply]:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(fuzz_server.grpc_url)
            clients.append(local.client)
        faults = tensor_faults(case) or model_faults(case, tokenizer, config)
        return case, faults, send(local.client, case)

    with ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = list(pool.map(run, cases()))
    for client in clients:
        client.close()

    failures, tally = [], Counter()
    for case, faults, reply in outcomes:
        problem = check_reply(case, reply, faults, config)
        if problem:
            failures.append(f"{case.name} {case.values!r:.300} raw={sorted(case.raw)}: {problem}")
        tally[f"refused: {min(named_inputs(reply.error, faults), default='?')}" if reply.error else "valid output"] += 1
    print(f"\nfuzz: {len(outcomes)} cases: {dict(tally.most_common())}")
    assert not failures, "\n".join(failures[:20])

    prompt = "def after_the_fuzz(x):"
    with grpcclient.InferenceServerClient(fuzz_server.grpc_url) as client:
        after = send(client, normal_case(prompt))
    solo = generate(backend, tokenizer.encode_prompt(prompt), "linear-spec", GenerationParams(16))
    assert after.error is None and after.output_ids == solo.new_ids
    metrics = wait_for_idle_pool(fuzz_server.metrics_url, KV_BLOCKS)
    assert metrics["nld_kv_blocks_in_use"] == 0 and metrics["nld_kv_blocks_free"] == KV_BLOCKS
