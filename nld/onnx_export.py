"""Export the step network to ONNX: the reference model with the KV cache in and out, dynamic shapes.

Inputs `input_ids` [B,T] int64, `position_ids` [B,T] int64, `attention_bias` [B,1,T,P+T] float (0 or
-inf: causal or bidirectional-group attention is encoded there), `past_key_values.{i}.key|value`
[B,KVH,P,D]; outputs `logits` [B,T,V] and `present.{i}.key|value` [B,KVH,T,D] (optimum's names).
Attention is exported as plain MatMul/Softmax (no opset-23 `Attention`, which TensorRT-RTX rejects in fp32).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx
import torch

from nld.model import NLDTransformer


class StepNetwork(torch.nn.Module):
    """NLDTransformer with flat KV inputs/outputs; `adapter` bakes the draft LoRA on or off."""

    def __init__(self, model: NLDTransformer, adapter: bool = False) -> None:
        super().__init__()
        self.model = model
        self.adapter = adapter

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_bias: torch.Tensor,
        *past_flat: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        layers = self.model.config.num_hidden_layers
        past = [(past_flat[2 * i], past_flat[2 * i + 1]) for i in range(layers)]
        hidden, presents = self.model(input_ids, position_ids, attention_bias, past, self.adapter)
        outputs = [self.model.logits(hidden)]
        for key, value in presents:
            outputs += [key, value]
        return tuple(outputs)


def io_names(
    layers: int, scalars: tuple[str, ...] = ("attention_bias",), past: str = "past_key_values", present: str = "present"
) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of a step graph: ids, positions, `scalars`, then `past.{i}.key|value` per layer
    in; logits and `present.{i}.key|value` out."""
    kv = [f"{i}.{part}" for i in range(layers) for part in ("key", "value")]
    inputs = ["input_ids", "position_ids", *scalars] + [f"{past}.{name}" for name in kv]
    return inputs, ["logits"] + [f"{present}.{name}" for name in kv]


def _rewrite_in_place(graph_path: Path, rewrite: Callable[[onnx.ModelProto], object]) -> None:
    """Load a graph with its external weights, edit it, and save it again under the same names."""
    model = onnx.load(str(graph_path), load_external_data=True)
    rewrite(model)
    for produced in graph_path.parent.iterdir():
        produced.unlink()  # the external-data file would otherwise be appended to
    onnx.save_model(
        model,
        str(graph_path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=f"{graph_path.name}.data",
    )


# The exporter logs one warning per torchvision op it skips when torchvision is absent (8 lines per graph).
REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


@contextlib.contextmanager
def quiet_logger(name: str) -> Iterator[None]:
    """Only errors from logger `name` while the block runs."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def export_step_onnx(
    model: NLDTransformer,
    path: str | Path,
    adapter: bool = False,
    rewrite: Callable[[onnx.ModelProto], object] | None = None,
) -> Path:
    """Write the step network of `model` (in its dtype) to `path`, its weights to `<path>.data` beside it
    (external data, as large models need), each file atomically; returns the graph's path. `rewrite`
    edits the exported graph in place before it is saved (onnx_qdq.py's Q/DQ)."""
    config = model.config
    layers, kv_heads, head_dim = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
    dtype = model.encoder.embed_tokens.weight.dtype
    batch, steps, past = 2, 3, 4
    example = (
        torch.zeros(batch, steps, dtype=torch.long),
        torch.arange(past, past + steps).expand(batch, -1),
        torch.zeros(batch, 1, steps, past + steps, dtype=dtype),
        *[torch.zeros(batch, kv_heads, past, head_dim, dtype=dtype) for _ in range(2 * layers)],
    )
    b, t, p = torch.export.Dim("batch"), torch.export.Dim("steps"), torch.export.Dim("past")
    shapes = (
        {0: b, 1: t},
        {0: b, 1: t},
        {0: b, 2: t, 3: torch.export.Dim.AUTO},
        tuple({0: b, 2: p} for _ in range(2 * layers)),
    )
    inputs, outputs = io_names(layers)
    return export_network(StepNetwork(model, adapter), example, shapes, (inputs, outputs), path, rewrite)


def export_network(
    network: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    shapes: tuple[object, ...],
    names: tuple[list[str], list[str]],
    path: str | Path,
    rewrite: Callable[[onnx.ModelProto], object] | None = None,
    translations: dict[object, Callable[..., object]] | None = None,
) -> Path:
    """Export `network` (traced on `example`, `shapes` dynamic) with (input, output) `names` to `path`, its
    weights to `<path>.data`, atomically; `translations` map custom torch ops to ONNX functions."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The exporter writes the graph and its external weights (`<name>.data`) side by side: export into a
    # private folder under the final names, then move the weights and, last, the graph into place.
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        with warnings.catch_warnings(), quiet_logger(REGISTRATION_LOGGER):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                network.eval(),
                example,
                str(work / path.name),
                input_names=names[0],
                output_names=names[1],
                dynamic_shapes=shapes,
                dynamo=True,
                optimize=True,
                verbose=False,
                custom_translation_table=translations,
            )
        if rewrite is not None:
            _rewrite_in_place(work / path.name, rewrite)
        for produced in sorted(work.iterdir(), key=lambda file: file.name == path.name):
            os.replace(produced, path.parent / produced.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path
