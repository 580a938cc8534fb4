"""NLD checkpoint configuration: `config.json` + `generation_config.json`, validated field by field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nld.errors import ConfigError

MODEL_TYPE = "nemotron_labs_diffusion"
ARCHITECTURE = "NemotronLabsDiffusionModel"  # what `architectures` must name when present
DLM_PARADIGMS = ("bidirectional", "autoregressive", "block_diff")
ROPE_TYPES = ("default", "yarn")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings, read from `rope_parameters` (YaRN + Llama-4 query scaling)."""

    theta: float
    rope_type: str = "default"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True
    llama_4_scaling_beta: float | None = None


@dataclass(frozen=True)
class NLDConfig:
    """Everything the runtime needs to know about an NLD checkpoint."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    mask_token_id: int
    eos_token_ids: tuple[int, ...]
    block_size: int = 32
    dlm_paradigm: str = "bidirectional"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    dlm_loss_weight: float | None = None
    ar_loss_weight: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def eos_token_id(self) -> int | None:
        """The primary EOS id (first of `eos_token_ids`), or None when the checkpoint has none."""
        return self.eos_token_ids[0] if self.eos_token_ids else None

    @property
    def kv_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


def read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object file; errors name the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    return data


class JsonFields:
    """Typed accessors over one JSON object that name the file and field in every error."""

    def __init__(self, data: dict[str, Any], source: str) -> None:
        self.data = data
        self.source = source

    def fail(self, name: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: field '{name}' {problem}")

    def _get(self, name: str, default: Any, required: bool) -> Any:
        if name not in self.data or self.data[name] is None:
            if required:
                raise self.fail(name, "is missing")
            return default
        return self.data[name]

    def int(self, name: str, default: int | None = None, *, required: bool = False, minimum: int = 0) -> Any:
        value = self._get(name, default, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, got {value!r}")
        if value < minimum:
            raise self.fail(name, f"must be >= {minimum}, got {value}")
        return value

    def float(self, name: str, default: float | None = None, *, required: bool = False, positive: bool = False) -> Any:
        value = self._get(name, default, required)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, f"must be a number, got {value!r}")
        if positive and value <= 0:
            raise self.fail(name, f"must be > 0, got {value}")
        return float(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self._get(name, default, False)
        if value not in choices:
            raise self.fail(name, f"must be one of {', '.join(choices)}, got {value!r}")
        return str(value)

    def bool(self, name: str, default: bool) -> bool:
        value = self._get(name, default, False)
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value


def _eos_ids(value: Any, fields: JsonFields, name: str) -> tuple[int, ...]:
    if value is None:
        return ()
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise fields.fail(name, f"must be a token id or a list of token ids, got {value!r}")
    return tuple(ids)


def parse_rope(data: dict[str, Any], source: str) -> RopeConfig:
    """Read `rope_parameters` (or the legacy `rope_scaling` + `rope_theta` pair)."""
    params = data.get("rope_parameters")
    if params is None:
        params = dict(data.get("rope_scaling") or {})
        if "rope_theta" in data:
            params.setdefault("rope_theta", data["rope_theta"])
        params.setdefault("rope_type", params.pop("type", "default"))
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: field 'rope_parameters' must be an object, got {params!r}")
    fields = JsonFields(params, f"{source} (rope_parameters)")
    rope_type = fields.choice("rope_type", ROPE_TYPES, "default")
    theta = fields.float("rope_theta", required=True, positive=True)
    beta = fields.float("llama_4_scaling_beta")
    llama4_original = fields.int("original_max_position_embeddings", minimum=1)
    if beta is not None and llama4_original is None:
        raise fields.fail("original_max_position_embeddings", "is required when llama_4_scaling_beta is set")
    if rope_type == "default":
        return RopeConfig(theta=theta, llama_4_scaling_beta=beta, original_max_position_embeddings=llama4_original)
    return RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=fields.float("factor", required=True, positive=True),
        original_max_position_embeddings=fields.int("original_max_position_embeddings", required=True, minimum=1),
        beta_fast=fields.float("beta_fast", 32.0) or 32.0,
        beta_slow=fields.float("beta_slow", 1.0) or 1.0,
        mscale=fields.float("mscale"),
        mscale_all_dim=fields.float("mscale_all_dim"),
        attention_factor=fields.float("attention_factor"),
        truncate=fields.bool("truncate", True),
        llama_4_scaling_beta=beta,
    )


def parse_config(
    data: dict[str, Any], generation: dict[str, Any] | None = None, source: str = "config.json"
) -> NLDConfig:
    """Validate a config.json dict (plus an optional generation_config.json dict) into an NLDConfig."""
    fields = JsonFields(data, source)
    model_type = data.get("model_type")
    if model_type != MODEL_TYPE:
        raise fields.fail("model_type", f"must be '{MODEL_TYPE}', got {model_type!r}")
    architectures = data.get("architectures")  # optional: configs written by hand or by training omit it
    if architectures is not None and (not isinstance(architectures, list) or ARCHITECTURE not in architectures):
        raise fields.fail("architectures", f"must name {ARCHITECTURE}, got {architectures!r}")
    if data.get("hidden_act", "silu") != "silu":
        raise fields.fail("hidden_act", f"must be 'silu', got {data.get('hidden_act')!r}")
    hidden = fields.int("hidden_size", required=True, minimum=1)
    heads = fields.int("num_attention_heads", required=True, minimum=1)
    kv_heads = fields.int("num_key_value_heads", heads, minimum=1)
    if heads % kv_heads:
        raise fields.fail("num_key_value_heads", f"({kv_heads}) must divide num_attention_heads ({heads})")
    head_dim = fields.int("head_dim", minimum=1)
    if head_dim is None:
        if hidden % heads:
            raise fields.fail("head_dim", f"is missing and hidden_size ({hidden}) is not divisible by {heads} heads")
        head_dim = hidden // heads
    if head_dim % 2:
        raise fields.fail("head_dim", f"must be even for rotary embeddings, got {head_dim}")
    vocab = fields.int("vocab_size", required=True, minimum=1)
    mask_id = fields.int("mask_token_id", required=True)
    if mask_id >= vocab:
        raise fields.fail("mask_token_id", f"({mask_id}) must be < vocab_size ({vocab})")
    gen_fields = JsonFields(generation or {}, "generation_config.json")
    eos = _eos_ids((generation or {}).get("eos_token_id"), gen_fields, "eos_token_id")
    if not eos:
        eos = _eos_ids(data.get("eos_token_id"), fields, "eos_token_id")
    for token in eos:
        if token >= vocab:
            raise ConfigError(f"{source}: eos_token_id {token} must be < vocab_size ({vocab})")
    return NLDConfig(
        hidden_size=hidden,
        num_hidden_layers=fields.int("num_hidden_layers", required=True, minimum=1),
        intermediate_size=fields.int("intermediate_size", required=True, minimum=1),
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        vocab_size=vocab,
        rms_norm_eps=fields.float("rms_norm_eps", 1e-5, positive=True),
        max_position_embeddings=fields.int("max_position_embeddings", required=True, minimum=1),
        rope=parse_rope(data, source),
        mask_token_id=mask_id,
        eos_token_ids=eos,
        block_size=fields.int("block_size", 32, minimum=1),
        dlm_paradigm=fields.choice("dlm_paradigm", DLM_PARADIGMS, "bidirectional"),
        tie_word_embeddings=fields.bool("tie_word_embeddings", False),
        bos_token_id=fields.int("bos_token_id"),
        dlm_loss_weight=fields.float("dlm_loss_weight"),
        ar_loss_weight=fields.float("ar_loss_weight"),
        extra=data,
    )


def load_config(model_dir: str | Path) -> NLDConfig:
    """Read and validate `config.json` (and `generation_config.json` when present) from a checkpoint folder."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ConfigError(f"{model_dir}: not a checkpoint directory")
    config_path = model_dir / "config.json"
    data = read_json(config_path)
    generation_path = model_dir / "generation_config.json"
    generation = read_json(generation_path) if generation_path.exists() else None
    return parse_config(data, generation, source=str(config_path))
