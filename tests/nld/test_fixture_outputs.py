"""Every call of every golden case: new_ids and nfe equal the released code's, with reference semantics."""

from __future__ import annotations

from typing import Any

import pytest

from nld.generate import generate
from nld.modes import GenerationParams
from tests.conftest import BACKEND_DEVICES, FIXTURE_CASES
from tests.nld.helpers import backend_for, expected_outputs

# Reference call name -> (our mode, our parameters, load the adapter?)
CALLS: dict[str, tuple[str, dict[str, Any], bool]] = {
    "ar_generate": ("ar", {}, False),
    "generate_thrNone": ("diffusion", {}, False),
    "generate_thr0.9": ("diffusion", {"threshold": 0.9}, False),
    "generate_thr0.5": ("diffusion", {"threshold": 0.5}, False),
    "generate_nocausal_thrNone": ("diffusion", {"causal_context": False}, False),
    "linear_spec": ("linear-spec", {}, False),
    "linear_spec_thr0.5": ("linear-spec", {"threshold": 0.5}, False),
    "linear_spec_lora": ("linear-spec", {}, True),
    "linear_spec_lora_thr0.5": ("linear-spec", {"threshold": 0.5}, True),
    "ar_generate_lora_active": ("ar", {"adapter_in_every_pass": True}, True),
}


def _cases() -> list[tuple[str, int, str]]:
    params = []
    for case in FIXTURE_CASES:
        names = list(CALLS) if case == "tiny_b8_spec_lora" else [n for n in CALLS if "lora" not in n]
        params += [(case, prompt, name) for prompt in range(4) for name in names]
    return params


def test_every_reference_call_is_mapped() -> None:
    for case in FIXTURE_CASES:
        assert set(expected_outputs(case)["calls"]) <= set(CALLS), case


@pytest.mark.parametrize(("kind", "device"), BACKEND_DEVICES)
@pytest.mark.parametrize(("case", "prompt_index", "call"), _cases())
def test_call_matches_reference(case: str, prompt_index: int, call: str, kind: str, device: str) -> None:
    outputs = expected_outputs(case)
    entry = outputs["prompts"][prompt_index]
    expected = entry["methods"][call]
    mode, extra, adapter = CALLS[call]
    params = GenerationParams(
        max_new_tokens=outputs["max_new_tokens"],
        block_length=outputs["block_length"],
        reference_semantics=True,
        **extra,
    )
    result = generate(backend_for(case, device, adapter=adapter, kind=kind), entry["prompt_ids"], mode, params)
    limit = outputs["max_new_tokens"]
    assert result.new_ids[:limit] == expected["new_ids"][:limit]
    assert result.nfe == expected["nfe"]
    # With reference semantics the whole output matches, overshoot of linear-spec's last cycle included.
    assert result.new_ids == expected["new_ids"]
