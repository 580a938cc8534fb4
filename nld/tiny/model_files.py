"""Write a trained model in the released NLD checkpoint layout (atomically: temp dir, then rename)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from nld.checkpoint import ADAPTER_DIR, ADAPTER_PREFIX
from nld.staging import staged_directory


def nld_config_json(shape: dict[str, Any], mask_id: int, bos_id: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    """config.json of an NLD checkpoint with the given backbone shape."""
    return {
        "architectures": ["NemotronLabsDiffusionModel"],
        "model_type": "nemotron_labs_diffusion",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "dlm_paradigm": "bidirectional",
        "dlm_loss_weight": None,
        "ar_loss_weight": 1.0,
        "mask_token_id": mask_id,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": "bfloat16",
        **shape,
    }


def write_checkpoint(
    output: Path,
    config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    tokenizer_json: Path,
    specials: dict[str, str],
    adapter: tuple[dict[str, Any], dict[str, torch.Tensor]] | None = None,
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Write config/generation config/bf16 weights/tokenizer (+ adapter) to `output`, replacing it whole."""
    output = Path(output)
    with staged_directory(output) as staging:
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        tensors = {name: t.detach().to(torch.bfloat16).contiguous() for name, t in weights.items()}
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        shutil.copy(tokenizer_json, staging / "tokenizer.json")
        (staging / "tokenizer_config.json").write_text(json.dumps(specials, indent=2) + "\n")
        if adapter is not None:
            adapter_config, adapter_weights = adapter
            (staging / ADAPTER_DIR).mkdir()
            (staging / ADAPTER_DIR / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2) + "\n")
            named = {f"{ADAPTER_PREFIX}{k}": v.detach().float().contiguous() for k, v in adapter_weights.items()}
            save_file(named, staging / ADAPTER_DIR / "adapter_model.safetensors", metadata={"format": "pt"})
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text)
    return output
