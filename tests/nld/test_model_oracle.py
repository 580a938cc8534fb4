"""Independent oracle: our backbone's causal logits equal transformers' Ministral-3 at atol 1e-5."""

from __future__ import annotations

import pytest
import torch

from nld.checkpoint import Checkpoint
from nld.config import parse_config
from nld.model import NLDTransformer
from nld.step import causal
from tests.conftest import DEVICES

transformers = pytest.importorskip("transformers")

ROPE = {
    "rope_type": "yarn",
    "rope_theta": 1_000_000.0,
    "factor": 16.0,
    "original_max_position_embeddings": 64,  # small, so the Llama-4 query scaling is exercised
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "llama_4_scaling_beta": 0.1,
}
SHAPE = {
    "hidden_size": 96,
    "num_hidden_layers": 3,
    "intermediate_size": 160,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,  # != hidden / heads, as on the 14B
    "vocab_size": 300,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 1024,
    "tie_word_embeddings": False,
}
HF_TO_NLD = {"model.": "encoder.", "lm_head.": "diffusion_head."}


def _hf_model(seed: int) -> torch.nn.Module:
    config = transformers.Ministral3Config(**SHAPE, rope_parameters=dict(ROPE), attn_implementation="eager")
    torch.manual_seed(seed)
    model = transformers.Ministral3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1 + 0.1 * torch.randn_like(parameter))
            else:
                parameter.copy_(torch.randn_like(parameter) / parameter.shape[-1] ** 0.5)
    return model


def _ours(hf_model: torch.nn.Module, device: str) -> NLDTransformer:
    config = parse_config(
        {**SHAPE, "model_type": "nemotron_labs_diffusion", "mask_token_id": 5, "rope_parameters": ROPE}
    )
    weights = {}
    for name, tensor in hf_model.state_dict().items():
        for prefix, ours in HF_TO_NLD.items():
            if name.startswith(prefix):
                weights[ours + name[len(prefix) :]] = tensor.clone()
    return NLDTransformer.from_checkpoint(Checkpoint(None, config, weights, None), torch.float32, device)  # type: ignore[arg-type]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("start", [0, 40, 500])
def test_causal_logits_equal_transformers(start: int, device: str) -> None:
    hf_model = _hf_model(seed=start)
    ours = _ours(hf_model, device)
    steps = 48
    generator = torch.Generator().manual_seed(start + 1)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, steps), generator=generator)
    positions = torch.arange(start, start + steps).expand(2, -1)
    with torch.no_grad():
        expected = hf_model(input_ids=ids, position_ids=positions).logits
        bias = torch.zeros(2, 1, steps, steps).masked_fill(~causal(steps), float("-inf"))
        hidden, _ = ours(ids.to(device), positions.to(device), bias.to(device))
        actual = ours.logits(hidden).cpu()
    assert expected.abs().max() > 1.0  # logits of a size where 1e-5 is a real bound
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
