"""`nld serve-openai --backend onnxruntime`: the worker runs every backend `nld repo` does (the TensorRT
one needs CUDA); its completions equal in-process generation on the same backend."""

from __future__ import annotations

import importlib.util

import pytest

from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams
from nld.tokenizer import NLDTokenizer
from tests.nld.serving.openai_run import NAME, OpenAIRun

pytestmark = [
    pytest.mark.server,
    pytest.mark.slow,  # an ONNX export in the worker and one here
    pytest.mark.skipif(importlib.util.find_spec("dynamo") is None, reason="NVIDIA Dynamo (ai-dynamo) not installed"),
    pytest.mark.skipif(importlib.util.find_spec("openai") is None, reason="the openai client is not installed"),
]

PROMPT = "def fibonacci(n):"


def test_onnxruntime_worker_equals_in_process_onnxruntime() -> None:
    import openai

    run = OpenAIRun("--backend", "onnxruntime")
    try:
        run.wait_ready()
        client = openai.OpenAI(base_url=run.url, api_key="unused", max_retries=0, timeout=120)
        backend = load_backend(str(default_model_dir()), "onnxruntime")
        tokenizer = NLDTokenizer.from_dir(default_model_dir())
        assert tokenizer is not None
        for mode in MODES:
            expected = generate(backend, tokenizer.encode_prompt(PROMPT), mode, GenerationParams(max_new_tokens=24))
            response = client.completions.create(model=f"{NAME}:{mode}", prompt=PROMPT, max_tokens=24, temperature=0)
            assert response.choices[0].text == tokenizer.decode(expected.new_ids), mode
    finally:
        run.stop()
