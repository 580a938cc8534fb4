"""GPU check for the tensorrt backend, for a CUDA host with PyTorch and TensorRT (`tensorrt`, or
`tensorrt_rtx` on an RTX-class GPU). One run, a few minutes:

1. fixture parity: the golden logits and every reference call's new_ids/nfe through engines built on the
   fly in fp32 (the tensorrt rows of tests/nld/test_fixture_{logits,outputs}.py);
2. the built-in tiny model in fp16: each mode on the tensorrt backend next to the torch backend on the
   same GPU (same greedy tokens? forwards per second), printed as a table.

    PYTHONPATH=. NLD_FIXTURES=../shared/fixtures python scripts/gpu_check_tensorrt.py

Exit status: 0 when parity holds, 1 when it does not, 2 when this host cannot run the check (says why).
"""

from __future__ import annotations

import importlib.util
import sys
import time

REQUIRED = ("torch", "numpy", "safetensors", "tokenizers", "onnx", "onnxscript", "pytest", "tqdm")
PROMPT = "def fibonacci(n):"


def missing_prerequisites() -> list[str]:
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if not any(importlib.util.find_spec(name) for name in ("tensorrt", "tensorrt_rtx")):
        missing.append("tensorrt or tensorrt_rtx")
    return missing


def compare_on_tiny_model() -> None:
    import torch

    from nld.generate import generate, load_backend
    from nld.models import default_model_dir
    from nld.modes import MODES, GenerationParams
    from nld.tokenizer import NLDTokenizer

    model = str(default_model_dir())
    prompt = NLDTokenizer.from_dir(model).encode_prompt(PROMPT, chat=False)
    began = time.perf_counter()
    engines = load_backend(model, "tensorrt", "float16", "cuda")
    print(f"\ntiny model engines built for this GPU in {time.perf_counter() - began:.1f} s")
    reference = load_backend(model, "torch", "float16", "cuda")
    print("| mode | same tokens as torch | tensorrt forwards/s | torch forwards/s |")
    print("|---|---|---|---|")
    for mode in MODES:
        params = GenerationParams(max_new_tokens=64)
        runs = {}
        for name, backend in (("tensorrt", engines), ("torch", reference)):
            generate(backend, prompt, mode, params)  # warm-up
            torch.cuda.synchronize()
            result = generate(backend, prompt, mode, params)
            torch.cuda.synchronize()
            runs[name] = result
        same = runs["tensorrt"].new_ids == runs["torch"].new_ids
        rates = [runs[name].forwards / runs[name].seconds for name in ("tensorrt", "torch")]
        print(f"| {mode} | {'yes' if same else 'no'} | {rates[0]:.0f} | {rates[1]:.0f} |")


def main() -> int:
    missing = missing_prerequisites()
    if missing:
        print(f"gpu_check_tensorrt: cannot run here, missing: {', '.join(missing)}", file=sys.stderr)
        return 2
    import pytest
    import torch

    if not torch.cuda.is_available():
        print("gpu_check_tensorrt: cannot run here, torch sees no CUDA device", file=sys.stderr)
        return 2
    print(f"GPU: {torch.cuda.get_device_name()} (SM {'.'.join(map(str, torch.cuda.get_device_capability()))})")
    tests = ["tests/nld/test_fixture_logits.py", "tests/nld/test_fixture_outputs.py"]
    parity = pytest.main(["-q", "-p", "no:cacheprovider", "-m", "gpu", "-k", "tensorrt", *tests])
    compare_on_tiny_model()
    return 0 if parity == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
