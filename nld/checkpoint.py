"""Checkpoint IO: NLD weights (single or sharded safetensors, memory-mapped) and the draft LoRA adapter."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from nld.config import JsonFields, NLDConfig, load_config, read_json
from nld.errors import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
ADAPTER_DIR = "linear_spec_lora"
ADAPTER_PREFIX = "base_model.model."
QUANT_CONFIG_FILE = "hf_quant_config.json"  # marks a unified quantized checkpoint (nld/quantize/hf_format.py)

# Per-layer weight names and their shapes, as functions of the config (the whole weight map in one table).
LAYER_WEIGHTS: dict[str, object] = {
    "self_attn.q_proj.weight": lambda c: (c.num_attention_heads * c.head_dim, c.hidden_size),
    "self_attn.k_proj.weight": lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
    "self_attn.v_proj.weight": lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size),
    "self_attn.o_proj.weight": lambda c: (c.hidden_size, c.num_attention_heads * c.head_dim),
    "mlp.gate_proj.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "mlp.up_proj.weight": lambda c: (c.intermediate_size, c.hidden_size),
    "mlp.down_proj.weight": lambda c: (c.hidden_size, c.intermediate_size),
    "input_layernorm.weight": lambda c: (c.hidden_size,),
    "post_attention_layernorm.weight": lambda c: (c.hidden_size,),
}


def expected_shapes(config: NLDConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name an NLD checkpoint must hold, with its shape."""
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.embed_tokens.weight": (config.vocab_size, config.hidden_size),
        "encoder.norm.weight": (config.hidden_size,),
    }
    if not config.tie_word_embeddings:
        shapes["diffusion_head.weight"] = (config.vocab_size, config.hidden_size)
    for layer in range(config.num_hidden_layers):
        for name, shape_of in LAYER_WEIGHTS.items():
            shapes[f"encoder.layers.{layer}.{name}"] = shape_of(config)  # type: ignore[operator]
    return shapes


def _weight_files(model_dir: Path) -> dict[str, Path]:
    """Map tensor name -> safetensors file, from the index when sharded."""
    index_path = model_dir / INDEX_FILE
    if index_path.exists():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index_path}: not a valid safetensors index ({exc!r})") from None
        files = {}
        for name, shard in weight_map.items():
            shard_path = model_dir / shard
            if not shard_path.exists():
                raise CheckpointError(f"{index_path}: shard '{shard}' (holding '{name}') not found")
            files[name] = shard_path
        return files
    single = model_dir / SINGLE_FILE
    if not single.exists():
        raise CheckpointError(f"{model_dir}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    with _open(single) as handle:
        return dict.fromkeys(handle.keys(), single)


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from None


def _check_names(found: set[str], expected: set[str], where: str) -> None:
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors: {', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
        raise CheckpointError(f"{where}: " + "; ".join(parts))


def iter_tensors(files: dict[str, Path], names: list[str]) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """Yield (name, tensor, file) for `names`, opening each file once; tensors are memory-mapped."""
    by_file: dict[Path, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for path, file_names in by_file.items():
        with _open(path) as handle:
            for name in file_names:
                yield name, handle.get_tensor(name), path


FILE_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
# What quantized checkpoints (ours and TRT-LLM's) hold besides floats: fp8 weights, packed int4 bytes.
QUANTIZED_FILE_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "U8": torch.uint8, "I8": torch.int8}


class LazyWeights(Mapping[str, torch.Tensor]):
    """An NLD checkpoint's weights with names, shapes and dtypes validated from the file headers, each
    tensor read from disk only when asked for: conversions stream through it one tensor at a time."""

    def __init__(self, model_dir: str | Path, config: NLDConfig) -> None:
        self.files = _weight_files(Path(model_dir))
        expected = expected_shapes(config)
        _check_names(set(self.files), set(expected), str(model_dir))
        self.specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        by_file: dict[Path, list[str]] = {}
        for name in sorted(expected):
            by_file.setdefault(self.files[name], []).append(name)
        for path, names in by_file.items():
            with _open(path) as handle:
                for name in names:
                    view = handle.get_slice(name)
                    shape, dtype = tuple(view.get_shape()), FILE_DTYPES.get(view.get_dtype())
                    if shape != expected[name]:
                        raise CheckpointError(
                            f"{path}: tensor '{name}' has shape {shape}, expected {expected[name]} from config.json"
                        )
                    if dtype is None:
                        raise CheckpointError(
                            f"{path}: tensor '{name}' has dtype {view.get_dtype()}, expected a float type"
                        )
                    self.specs[name] = (shape, dtype)

    def __getitem__(self, name: str) -> torch.Tensor:
        with _open(self.files[name]) as handle:
            return handle.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def meta(self) -> dict[str, torch.Tensor]:
        """Data-free stand-ins of every tensor (same shape and dtype), to plan a conversion."""
        return {name: torch.empty(shape, dtype=dtype, device="meta") for name, (shape, dtype) in self.specs.items()}


def load_weights(model_dir: str | Path, config: NLDConfig) -> dict[str, torch.Tensor]:
    """Load and validate every weight of an NLD checkpoint; errors name the file and tensor."""
    lazy = LazyWeights(model_dir, config)  # names, shapes and dtypes, checked from the file headers
    return {name: tensor for name, tensor, _ in iter_tensors(lazy.files, sorted(lazy.specs))}


def load_quantized_weights(model_dir: str | Path, config: NLDConfig) -> dict[str, torch.Tensor]:
    """A unified quantized checkpoint's weights, dequantized to float32 and validated like plain ones."""
    from nld.quantize.hf_format import dequantize

    model_dir = Path(model_dir)
    quantization = read_json(model_dir / QUANT_CONFIG_FILE).get("quantization")
    if not isinstance(quantization, dict):
        raise CheckpointError(f"{model_dir / QUANT_CONFIG_FILE}: no 'quantization' object")
    files = _weight_files(model_dir)
    weights = dequantize({name: t for name, t, _ in iter_tensors(files, sorted(files))}, quantization, torch.float32)
    expected = expected_shapes(config)
    _check_names(set(weights), set(expected), str(model_dir))
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise CheckpointError(
                f"{model_dir}: tensor '{name}' dequantizes to shape {tuple(weights[name].shape)}, expected {shape}"
            )
    return weights


@dataclass(frozen=True)
class LoraAdapter:
    """A PEFT LoRA on o_proj: per layer (A [r, in], B [out, r]); delta(x) = scaling * B(A(x))."""

    rank: int
    alpha: float
    scaling: float
    layers: dict[int, tuple[torch.Tensor, torch.Tensor]]
    path: Path


def load_adapter(adapter_dir: str | Path, config: NLDConfig) -> LoraAdapter:
    """Read `linear_spec_lora/` (adapter_config.json + adapter_model.safetensors) and validate it."""
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / "adapter_config.json"
    data = read_json(config_path)
    fields = JsonFields(data, str(config_path))
    if data.get("peft_type", "LORA") != "LORA":
        raise fields.fail("peft_type", f"must be 'LORA', got {data.get('peft_type')!r}")
    rank = fields.int("r", required=True, minimum=1)
    alpha = fields.float("lora_alpha", required=True, positive=True)
    targets = data.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or sorted(targets) != ["o_proj"]:
        raise fields.fail("target_modules", f"must be ['o_proj'], got {targets!r}")
    if data.get("use_dora"):
        raise fields.fail("use_dora", "is not supported (plain LoRA only)")
    scaling = alpha / rank**0.5 if data.get("use_rslora") else alpha / rank

    weights_path = adapter_dir / "adapter_model.safetensors"
    if not weights_path.exists():
        raise CheckpointError(f"{weights_path}: file not found")
    in_features = config.num_attention_heads * config.head_dim
    expected: dict[str, tuple[int, ...]] = {}
    for layer in range(config.num_hidden_layers):
        stem = f"{ADAPTER_PREFIX}encoder.layers.{layer}.self_attn.o_proj"
        expected[f"{stem}.lora_A.weight"] = (rank, in_features)
        expected[f"{stem}.lora_B.weight"] = (config.hidden_size, rank)
    with _open(weights_path) as handle:
        _check_names(set(handle.keys()), set(expected), str(weights_path))
        tensors = {name: handle.get_tensor(name) for name in expected}
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected[name]:
            raise CheckpointError(
                f"{weights_path}: tensor '{name}' has shape {tuple(tensor.shape)}, expected {expected[name]}"
            )
    layers = {}
    for layer in range(config.num_hidden_layers):
        stem = f"{ADAPTER_PREFIX}encoder.layers.{layer}.self_attn.o_proj"
        layers[layer] = (tensors[f"{stem}.lora_A.weight"], tensors[f"{stem}.lora_B.weight"])
    return LoraAdapter(rank=rank, alpha=alpha, scaling=scaling, layers=layers, path=adapter_dir)


@dataclass(frozen=True)
class Checkpoint:
    """A loaded NLD checkpoint: validated config, weights, and the optional draft adapter."""

    path: Path
    config: NLDConfig
    weights: dict[str, torch.Tensor]
    adapter: LoraAdapter | None


class NonFiniteWeightsWarning(UserWarning):
    """A checkpoint loaded with NaN or Inf in a tensor (`load_checkpoint(..., nonfinite="warn")`)."""


def _is_finite(tensor: torch.Tensor) -> bool:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    low, high = torch.aminmax(tensor)  # one fast pass; NaN propagates to both, Inf to one
    return math.isfinite(low.item()) and math.isfinite(high.item())


def nonfinite_tensor(checkpoint: Checkpoint) -> str | None:
    """The first tensor of the loaded checkpoint (weights, then the draft adapter) that holds NaN or Inf,
    as a message naming its file and name; None when every tensor is finite. Reads nothing from disk."""
    found: tuple[str, torch.Tensor, Path] | None = None
    for name in sorted(checkpoint.weights):
        if not _is_finite(checkpoint.weights[name]):
            files = _weight_files(checkpoint.path)
            found = (name, checkpoint.weights[name], files.get(name, checkpoint.path))
            break
    if found is None and checkpoint.adapter is not None:
        for layer, pair in sorted(checkpoint.adapter.layers.items()):
            for part, tensor in zip(("lora_A", "lora_B"), pair, strict=True):
                if found is None and not _is_finite(tensor):
                    name = f"{ADAPTER_PREFIX}encoder.layers.{layer}.self_attn.o_proj.{part}.weight"
                    found = (name, tensor, checkpoint.adapter.path / "adapter_model.safetensors")
    if found is None:
        return None
    name, tensor, path = found
    bad = int((~torch.isfinite(tensor)).sum())
    return f"{path}: tensor '{name}' holds {bad} non-finite values (NaN or Inf) of {tensor.numel()}"


def load_checkpoint(model_dir: str | Path, *, with_adapter: bool = True, nonfinite: str = "warn") -> Checkpoint:
    """Load an NLD checkpoint folder (a unified quantized one is dequantized); the `linear_spec_lora/`
    adapter is loaded when present. A tensor holding NaN or Inf (`nonfinite_tensor`) gives a
    NonFiniteWeightsWarning ("warn"), a CheckpointError ("error"), or nothing ("ignore")."""
    if nonfinite not in ("warn", "error", "ignore"):
        raise ValueError(f"nonfinite must be 'warn', 'error' or 'ignore', got {nonfinite!r}")
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    quantized = (model_dir / QUANT_CONFIG_FILE).exists()
    weights = load_quantized_weights(model_dir, config) if quantized else load_weights(model_dir, config)
    adapter_dir = model_dir / ADAPTER_DIR
    adapter = load_adapter(adapter_dir, config) if with_adapter and adapter_dir.is_dir() else None
    checkpoint = Checkpoint(path=model_dir, config=config, weights=weights, adapter=adapter)
    problem = None if nonfinite == "ignore" else nonfinite_tensor(checkpoint)
    if problem is not None and nonfinite == "error":
        raise CheckpointError(problem)
    if problem is not None:
        warnings.warn(problem, NonFiniteWeightsWarning, stacklevel=2)
    return checkpoint
