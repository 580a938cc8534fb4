"""Logits of the three forward kinds equal the released code's, on every fixture prompt (atol 1e-4)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nld.step import bidirectional, causal
from tests.conftest import BACKEND_DEVICES, FIXTURE_CASES
from tests.nld.helpers import backend_for, expected_outputs, expected_path, raw_step

CASES = [(case, prompt, False) for case in FIXTURE_CASES for prompt in range(4)]
CASES += [("tiny_b8_spec_lora", prompt, True) for prompt in range(4)]


def _forwards(case: str, prompt_index: int, lora: bool, device: str, kind: str = "torch") -> dict[str, torch.Tensor]:
    backend = backend_for(case, device, kind=kind)
    outputs = expected_outputs(case)
    prompt = outputs["prompts"][prompt_index]["prompt_ids"]
    block = outputs["block_length"]
    mask = backend.config.mask_token_id
    length = len(prompt)
    result = {}
    result["ar"] = raw_step(backend, backend.new_cache(length), prompt, causal(length), adapter=lora)
    with_masks = prompt + [mask] * block
    result["bidir"] = raw_step(
        backend, backend.new_cache(len(with_masks)), with_masks, bidirectional(len(with_masks)), adapter=lora
    )
    cache = backend.new_cache(length + block)
    prefill = raw_step(backend, cache, prompt, causal(length), write=True, adapter=lora)
    seed = int(prefill[-1].argmax())
    result["block"] = raw_step(backend, cache, [seed] + [mask] * (block - 1), bidirectional(block), adapter=lora)
    return result


@pytest.mark.parametrize(("kind", "device"), BACKEND_DEVICES)
@pytest.mark.parametrize(("case", "prompt_index", "lora"), CASES)
def test_logits_match_reference(case: str, prompt_index: int, lora: bool, kind: str, device: str) -> None:
    suffix = "_lora" if lora else ""
    for forward, logits in _forwards(case, prompt_index, lora, device, kind).items():
        expected = np.load(expected_path(case, f"logits_p{prompt_index}_{forward}{suffix}.npy"))
        assert logits.shape == expected.shape, forward
        np.testing.assert_allclose(logits.numpy(), expected, atol=1e-4, rtol=0, err_msg=f"{kind} {forward}{suffix}")


def test_adapter_changes_the_draft_logits() -> None:
    """Guards the LoRA comparison above against an adapter that silently does nothing."""
    plain = np.load(expected_path("tiny_b8_spec_lora", "logits_p0_block.npy"))
    adapted = np.load(expected_path("tiny_b8_spec_lora", "logits_p0_block_lora.npy"))
    assert np.abs(plain - adapted).max() > 1e-2
    ours = _forwards("tiny_b8_spec_lora", 0, True, "cpu")["block"].numpy()
    assert np.abs(ours - plain).max() > 1e-2
