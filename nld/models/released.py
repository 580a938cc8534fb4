"""config.json of the released NLD models (random-weight stand-ins for plans, conversions and benchmarks).

Sizes from the model card: 3B = 3072 hidden / 26 layers / 9216 FFN; 8B = 4096 / 34 / 14336;
14B = 5120 / 40 / 16384; all 32 heads, 8 KV heads, head_dim 128, vocabulary 131072. RoPE settings are
the 8B's for all three.
"""

from __future__ import annotations

from typing import Any

_8B: dict[str, Any] = {
    "model_type": "nemotron_labs_diffusion",
    "hidden_size": 4096,
    "num_hidden_layers": 34,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 131072,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 262144,
    "tie_word_embeddings": False,
    "mask_token_id": 100,
    "block_size": 32,
    "dlm_paradigm": "bidirectional",
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 1e9,
        "factor": 16,
        "original_max_position_embeddings": 16384,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1,
        "mscale_all_dim": 1,
        "llama_4_scaling_beta": 0.1,
    },
}

RELEASED_CONFIGS: dict[str, dict[str, Any]] = {
    "3b": {**_8B, "hidden_size": 3072, "num_hidden_layers": 26, "intermediate_size": 9216},
    "8b": _8B,
    "14b": {**_8B, "hidden_size": 5120, "num_hidden_layers": 40, "intermediate_size": 16384},
}
