"""Each class of bad checkpoint gives one error that names the file and the field or tensor."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nld.builder.cli import main as nld_build
from nld.checkpoint import load_checkpoint
from nld.errors import NLDError
from tests.conftest import fixture_dir


def _copy(tmp_path: Path, case: str = "tiny_b8_spec_lora") -> Path:
    target = tmp_path / case
    shutil.copytree(fixture_dir(case), target, ignore=shutil.ignore_patterns("expected"))
    for path in target.rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
    return target


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _edit_weights(path: Path, change: Callable[[dict], None]) -> None:
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def _shard(model: Path) -> None:
    """Rewrite model.safetensors as two shards plus an index, as large checkpoints ship."""
    tensors = load_file(model / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({name: tensors[name] for name in shard_names}, model / shard)
        weight_map.update(dict.fromkeys(shard_names, shard))
    (model / "model.safetensors").unlink()
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


# (name, how to break the checkpoint, substrings the error must contain)
BREAKAGES: list[tuple[str, Callable[[Path], None], list[str]]] = [
    ("missing config", lambda m: (m / "config.json").unlink(), ["config.json", "not found"]),
    ("config not json", lambda m: (m / "config.json").write_text("{"), ["config.json", "not valid JSON"]),
    (
        "missing field",
        lambda m: _edit_json(m / "config.json", lambda d: d.pop("hidden_size")),
        ["config.json", "'hidden_size'", "missing"],
    ),
    (
        "wrong field type",
        lambda m: _edit_json(m / "config.json", lambda d: d.update(num_hidden_layers="two")),
        ["config.json", "'num_hidden_layers'", "integer"],
    ),
    (
        "wrong model type",
        lambda m: _edit_json(m / "config.json", lambda d: d.update(model_type="llama")),
        ["config.json", "'model_type'"],
    ),
    (
        "architectures of another model",
        lambda m: _edit_json(m / "config.json", lambda d: d.update(architectures=["LlamaForCausalLM"])),
        ["config.json", "'architectures'", "NemotronLabsDiffusionModel", "LlamaForCausalLM"],
    ),
    (
        "mask id out of vocab",
        lambda m: _edit_json(m / "config.json", lambda d: d.update(mask_token_id=9999)),
        ["config.json", "'mask_token_id'"],
    ),
    (
        "bad rope",
        lambda m: _edit_json(m / "config.json", lambda d: d["rope_parameters"].pop("factor")),
        ["config.json", "rope_parameters", "'factor'"],
    ),
    (
        "bad eos",
        lambda m: _edit_json(m / "generation_config.json", lambda d: d.update(eos_token_id="eos")),
        ["generation_config.json", "'eos_token_id'"],
    ),
    ("no weights", lambda m: (m / "model.safetensors").unlink(), ["model.safetensors", "found"]),
    ("corrupt weights", lambda m: (m / "model.safetensors").write_bytes(b"garbage"), ["model.safetensors"]),
    (
        "missing tensor",
        lambda m: _edit_weights(m / "model.safetensors", lambda t: t.pop("encoder.layers.1.mlp.up_proj.weight")),
        ["missing tensors", "encoder.layers.1.mlp.up_proj.weight"],
    ),
    (
        "unexpected tensor",
        lambda m: _edit_weights(m / "model.safetensors", lambda t: t.update({"lm_head.weight": torch.zeros(2)})),
        ["unexpected tensors", "lm_head.weight"],
    ),
    (
        "misshaped tensor",
        lambda m: _edit_weights(
            m / "model.safetensors",
            lambda t: t.update({"encoder.layers.0.self_attn.k_proj.weight": torch.zeros(64, 64)}),
        ),
        ["model.safetensors", "encoder.layers.0.self_attn.k_proj.weight", "(64, 64)", "(32, 64)"],
    ),
    (
        "missing shard",
        lambda m: (_shard(m), (m / "model-00002-of-00002.safetensors").unlink()),
        ["model.safetensors.index.json", "model-00002-of-00002.safetensors"],
    ),
    (
        "adapter rank",
        lambda m: _edit_json(m / "linear_spec_lora" / "adapter_config.json", lambda d: d.update(r=0)),
        ["adapter_config.json", "'r'"],
    ),
    (
        "adapter target",
        lambda m: _edit_json(
            m / "linear_spec_lora" / "adapter_config.json", lambda d: d.update(target_modules=["q_proj"])
        ),
        ["adapter_config.json", "'target_modules'"],
    ),
    (
        "adapter tensor shape",
        lambda m: _edit_weights(
            m / "linear_spec_lora" / "adapter_model.safetensors",
            lambda t: t.update(
                {"base_model.model.encoder.layers.1.self_attn.o_proj.lora_A.weight": torch.zeros(8, 64)}
            ),
        ),
        ["adapter_model.safetensors", "layers.1.self_attn.o_proj.lora_A.weight", "(8, 64)"],
    ),
]


@pytest.mark.parametrize(("name", "breakage", "expected"), BREAKAGES, ids=[b[0] for b in BREAKAGES])
def test_bad_checkpoint_error_names_the_problem(
    tmp_path: Path, name: str, breakage: Callable[[Path], None], expected: list[str]
) -> None:
    model = _copy(tmp_path)
    breakage(model)
    with pytest.raises(NLDError) as error:
        load_checkpoint(model)
    for part in expected:
        assert part in str(error.value), (name, str(error.value))


def test_sharded_checkpoint_loads_like_single(tmp_path: Path) -> None:
    model = _copy(tmp_path)
    single = load_checkpoint(model)
    _shard(model)
    sharded = load_checkpoint(model)
    assert sharded.weights.keys() == single.weights.keys()
    for name, tensor in single.weights.items():
        assert torch.equal(sharded.weights[name], tensor), name


def test_cli_reports_bad_checkpoint_in_one_line(tmp_path: Path) -> None:
    model = _copy(tmp_path)
    _edit_weights(model / "model.safetensors", lambda t: t.pop("encoder.norm.weight"))
    run = subprocess.run(
        [sys.executable, "-m", "nld.cli", "generate", "--model", str(model), "--mode", "ar", "--prompt-ids", "1,2"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert "encoder.norm.weight" in run.stderr and str(model) in run.stderr


def _poison(path: Path, name: str, value: float) -> None:
    """Set one element of tensor `name` in the safetensors file `path` to `value` (NaN or Inf)."""

    def change(tensors: dict) -> None:
        tensors[name].view(-1)[7] = value

    _edit_weights(path, change)


NONFINITE = [
    ("nan weight", "model.safetensors", "encoder.layers.1.mlp.down_proj.weight", float("nan")),
    ("inf weight", "model.safetensors", "encoder.embed_tokens.weight", float("-inf")),
    (
        "nan adapter",
        "linear_spec_lora/adapter_model.safetensors",
        "base_model.model.encoder.layers.0.self_attn.o_proj.lora_B.weight",
        float("nan"),
    ),
]


@pytest.mark.parametrize(("file", "tensor", "value"), [case[1:] for case in NONFINITE], ids=[c[0] for c in NONFINITE])
def test_nld_build_refuses_nonfinite_weights_naming_the_tensor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str, tensor: str, value: float
) -> None:
    model = _copy(tmp_path)
    _poison(model / file, tensor, value)
    out = tmp_path / "out"
    argv = ["--model", str(model), "--target", "cpu", "--precision", "bf16", "--output", str(out)]
    assert nld_build(argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "non-finite" in lines[0], lines
    assert f"'{tensor}'" in lines[0] and str(model / file) in lines[0]
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == [model.name]  # refused before any work


def test_generate_warns_once_on_nonfinite_weights_and_still_runs(tmp_path: Path) -> None:
    model = _copy(tmp_path)
    _poison(model / "model.safetensors", "encoder.layers.0.self_attn.q_proj.weight", float("inf"))
    argv = ["generate", "--model", str(model), "--mode", "ar", "--prompt-ids", "1,2", "--max-new-tokens", "3"]
    run = subprocess.run(
        [sys.executable, "-m", "nld.cli", *argv, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    warnings = [line for line in run.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("nld: warning: "), run.stderr
    assert "'encoder.layers.0.self_attn.q_proj.weight'" in warnings[0] and "model.safetensors" in warnings[0]
    assert "Traceback" not in run.stderr and len(json.loads(run.stdout)["new_ids"]) == 3
