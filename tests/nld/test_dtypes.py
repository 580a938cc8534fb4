"""Half-precision reference model: bf16/fp16 logits stay close to the float32 golden logits."""

from __future__ import annotations

import numpy as np
import pytest

from nld.step import causal
from tests.conftest import DEVICES
from tests.nld.helpers import backend_for, expected_outputs, expected_path, raw_step

# Max |logit error| allowed against float32 (logits here reach ~19): bf16 has 8 mantissa bits, fp16 11.
TOLERANCE = {"bfloat16": 0.5, "float16": 0.08}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
def test_half_precision_logits_close_to_float32(dtype: str, device: str) -> None:
    backend = backend_for("tiny_b8", device, dtype)
    for index, entry in enumerate(expected_outputs("tiny_b8")["prompts"]):
        prompt = entry["prompt_ids"]
        logits = raw_step(backend, backend.new_cache(len(prompt)), prompt, causal(len(prompt)))
        expected = np.load(expected_path("tiny_b8", f"logits_p{index}_ar.npy"))
        np.testing.assert_allclose(logits.numpy(), expected, atol=TOLERANCE[dtype], rtol=0)
