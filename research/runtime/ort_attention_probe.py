#!/usr/bin/env python3
"""Which onnxruntime attention operators read a KV buffer in place at a cost of its valid length, not of
its capacity (the question behind the onnxruntime backend's in-place graph, docs/runtime.md).

For one layer's attention (heads, KV heads and head size of the 133M shape) over a buffer of `--capacity`
positions of which L are valid, it times on onnxruntime's CPU provider:
- `Attention` (opset 24) over the whole buffer with `nonpad_kv_seqlen` = L (reads in place);
- `Attention` over an exact [.., L, ..] copy (what the plain graph is fed; the copy itself not timed);
- com.microsoft `GroupQueryAttention` over the buffer shared with its present output (reads in place,
  writes the new K/V in place; causal only);
- `TensorScatter` (opset 24) writing one token's K/V into the buffer, its output bound to the buffer
  itself ("aliased") or to a fresh one.

    .venv/bin/python research/runtime/ort_attention_probe.py [--capacity 4096] [--lengths 64,1024,4000]
        [--threads 2] [--runs 300] [--out ort_attention_probe.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime
from onnx import TensorProto, helper

HEADS, KV_HEADS, DIM = 12, 4, 64
FLOAT = TensorProto.FLOAT


def session(nodes: list, inputs: list, outputs: list, opsets: dict[str, int], threads: int) -> object:
    model = helper.make_model(
        helper.make_graph(nodes, "probe", inputs, outputs),
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in opsets.items()],
    )
    model.ir_version = 11
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(model.SerializeToString(), options)


def timed(run: object, feeds: dict[str, np.ndarray], outputs: list[str], aliases: dict[str, str], runs: int) -> float:
    """Microseconds per run; outputs named in `aliases` are bound to the feed they name (shared buffers)."""
    values = {name: onnxruntime.OrtValue.ortvalue_from_numpy(array) for name, array in feeds.items()}
    binding = run.io_binding()
    for name, value in values.items():
        binding.bind_ortvalue_input(name, value)
    for name in outputs:
        if name in aliases:
            binding.bind_ortvalue_output(name, values[aliases[name]])
        else:
            binding.bind_output(name)
    run.run_with_iobinding(binding)
    began = time.perf_counter()
    for _ in range(runs):
        run.run_with_iobinding(binding)
    return (time.perf_counter() - began) / runs * 1e6


def probe(capacity: int, length: int, threads: int, runs: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    value = helper.make_tensor_value_info
    cache = rng.standard_normal((1, KV_HEADS, capacity, DIM)).astype(np.float32)
    query = rng.standard_normal((1, HEADS, 1, DIM)).astype(np.float32)
    new = rng.standard_normal((1, KV_HEADS, 1, DIM)).astype(np.float32)
    four_d = {"q": [1, HEADS, 1, DIM], "k": [1, KV_HEADS, "L", DIM], "v": [1, KV_HEADS, "L", DIM]}
    attention_inputs = [value(name, FLOAT, shape) for name, shape in four_d.items()]
    result = [value("y", FLOAT, [1, HEADS, 1, DIM])]
    opset24 = {"": 24}
    nonpad = session(
        [helper.make_node("Attention", ["q", "k", "v", "", "", "", "lengths"], ["y"])],
        [*attention_inputs, value("lengths", TensorProto.INT64, [1])],
        result,
        opset24,
        threads,
    )
    exact = session([helper.make_node("Attention", ["q", "k", "v"], ["y"])], attention_inputs, result, opset24, threads)
    found = {
        "attention_nonpad_us": timed(
            nonpad, {"q": query, "k": cache, "v": cache, "lengths": np.array([length])}, ["y"], {}, runs
        ),
        "attention_exact_us": timed(
            exact, {"q": query, "k": cache[:, :, :length].copy(), "v": cache[:, :, :length].copy()}, ["y"], {}, runs
        ),
    }
    gqa_inputs = [
        value("q", FLOAT, [1, 1, HEADS * DIM]),
        value("k", FLOAT, [1, 1, KV_HEADS * DIM]),
        value("v", FLOAT, [1, 1, KV_HEADS * DIM]),
        value("pk", FLOAT, [1, KV_HEADS, capacity, DIM]),
        value("pv", FLOAT, [1, KV_HEADS, capacity, DIM]),
        value("seqlens_k", TensorProto.INT32, [1]),
        value("total", TensorProto.INT32, []),
    ]
    gqa_node = helper.make_node(
        "GroupQueryAttention",
        ["q", "k", "v", "pk", "pv", "seqlens_k", "total"],
        ["y", "present_k", "present_v"],
        domain="com.microsoft",
        num_heads=HEADS,
        kv_num_heads=KV_HEADS,
    )
    buffers = [value(name, FLOAT, [1, KV_HEADS, capacity, DIM]) for name in ("present_k", "present_v")]
    gqa_outputs = [value("y", FLOAT, [1, 1, HEADS * DIM]), *buffers]
    gqa = session([gqa_node], gqa_inputs, gqa_outputs, {"": 21, "com.microsoft": 1}, threads)
    feeds = {
        "q": query.reshape(1, 1, -1),
        "k": new.reshape(1, 1, -1),
        "v": new.reshape(1, 1, -1),
        "pk": cache.copy(),
        "pv": cache.copy(),
        "seqlens_k": np.array([length], np.int32),
        "total": np.array(length + 1, np.int32),
    }
    shared = {"present_k": "pk", "present_v": "pv"}
    found["gqa_shared_buffer_us"] = timed(gqa, feeds, ["y", "present_k", "present_v"], shared, runs)
    scatter_inputs = [
        value("cache", FLOAT, [1, KV_HEADS, capacity, DIM]),
        value("new", FLOAT, [1, KV_HEADS, 1, DIM]),
        value("at", TensorProto.INT64, [1]),
    ]
    scatter = session(
        [helper.make_node("TensorScatter", ["cache", "new", "at"], ["written"], axis=2)],
        scatter_inputs,
        [value("written", FLOAT, [1, KV_HEADS, capacity, DIM])],
        opset24,
        threads,
    )
    feeds = {"cache": cache.copy(), "new": new, "at": np.array([length])}
    found["scatter_aliased_us"] = timed(scatter, feeds, ["written"], {"written": "cache"}, runs)
    found["scatter_fresh_us"] = timed(scatter, feeds, ["written"], {}, runs)
    return {name: round(microseconds, 1) for name, microseconds in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacity", type=int, default=4096)
    parser.add_argument("--lengths", default="64,1024,4000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("ort_attention_probe.json"))
    args = parser.parse_args()
    lengths = [int(length) for length in args.lengths.split(",") if length]
    if any(not 0 < length < args.capacity for length in lengths):
        parser.error(f"--lengths must lie in (0, {args.capacity})")
    rows = [{"length": length, **probe(args.capacity, length, args.threads, args.runs)} for length in lengths]
    names = list(rows[0])[1:]
    print(f"capacity {args.capacity}, onnxruntime {onnxruntime.__version__}, {args.threads} threads, microseconds")
    print("| valid length | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for row in rows:
        print(f"| {row['length']} | " + " | ".join(str(row[name]) for name in names) + " |")
    facts = {"capacity": args.capacity, "threads": args.threads, "onnxruntime": onnxruntime.__version__}
    args.out.write_text(json.dumps({"facts": facts, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
