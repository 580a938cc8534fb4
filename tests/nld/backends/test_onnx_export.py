"""The exported step network's contract: optimum's names, dynamic B/T/P, the model's dtype, and
hand-written attention (no opset-23 `Attention` node, which TensorRT-RTX rejects in fp32)."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from nld.checkpoint import load_checkpoint
from nld.model import NLDTransformer
from nld.onnx_export import export_step_onnx, io_names
from tests.conftest import fixture_dir

ONNX_TYPES = {
    torch.float32: onnx.TensorProto.FLOAT,
    torch.float16: onnx.TensorProto.FLOAT16,
    torch.bfloat16: onnx.TensorProto.BFLOAT16,
}


def dims(value: onnx.ValueInfoProto) -> list[str | int]:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("dtype", list(ONNX_TYPES))
def test_step_graph_signature(tmp_path: Path, dtype: torch.dtype) -> None:
    checkpoint = load_checkpoint(fixture_dir("tiny_b8_spec_lora"))
    model = NLDTransformer.from_checkpoint(checkpoint, dtype)
    graph = onnx.load(str(export_step_onnx(model, tmp_path / "step.onnx", adapter=True))).graph
    inputs, outputs = io_names(checkpoint.config.num_hidden_layers)
    assert [v.name for v in graph.input] == inputs and [v.name for v in graph.output] == outputs
    by_name = {v.name: v for v in [*graph.input, *graph.output]}
    batch, steps = dims(by_name["input_ids"])
    assert isinstance(batch, str) and isinstance(steps, str) and batch != steps  # dynamic B and T
    assert by_name["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    past = dims(by_name["past_key_values.0.key"])
    assert past[0] == batch and isinstance(past[2], str) and past[2] not in (batch, steps)  # dynamic P
    assert past[1] == checkpoint.config.num_key_value_heads and past[3] == checkpoint.config.head_dim
    for name in ("attention_bias", "past_key_values.1.value", "logits", "present.1.value"):
        assert by_name[name].type.tensor_type.elem_type == ONNX_TYPES[dtype], name
    assert dims(by_name["logits"])[2] == checkpoint.config.vocab_size
    assert not any(node.op_type == "Attention" for node in graph.node)
    assert sum(node.op_type == "Softmax" for node in graph.node) == checkpoint.config.num_hidden_layers
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step.onnx", "step.onnx.data"]  # no temporary leftovers
    weights = onnx.load(str(tmp_path / "step.onnx"), load_external_data=False).graph.initializer
    external = [w for w in weights if w.data_location == onnx.TensorProto.EXTERNAL]
    assert external and {entry.value for w in external for entry in w.external_data if entry.key == "location"} == {
        "step.onnx.data"
    }


def test_an_on_the_fly_export_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The onnxruntime backend's sessions hold the graphs: the export folder goes once they are open,
    and the backend still decodes."""
    import tempfile

    from nld.backends import BACKENDS
    from nld.generate import generate

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    backend = BACKENDS["onnxruntime"].from_checkpoint(load_checkpoint(fixture_dir("tiny_b8"), with_adapter=True))
    assert list(tmp_path.glob("nld-onnx-*")) == []  # (torch may leave its own caches there)
    assert len(generate(backend, [1, 5, 9], "linear-spec").new_ids) > 0


def test_the_export_prints_no_torchvision_warnings(tmp_path: Path) -> None:
    """Without torchvision the exporter logged one warning per skipped torchvision op (8 per graph), once
    per process: so a fresh one."""
    import subprocess
    import sys

    script = (
        "import sys, torch; from nld.checkpoint import load_checkpoint; from nld.model import NLDTransformer; "
        "from nld.onnx_export import export_step_onnx; "
        "model = NLDTransformer.from_checkpoint(load_checkpoint(sys.argv[1]), torch.float32); "
        "export_step_onnx(model, sys.argv[2])"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(fixture_dir("tiny_b8")), str(tmp_path / "step.onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "torchvision" not in run.stderr + run.stdout
