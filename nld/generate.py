"""Library entry point: decode one prompt with a named mode on a step backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer

from nld.errors import NLDError
from nld.limits import check_prompt_ids, check_request
from nld.modes import MODES, Decoding, Generation, GenerationParams, run_policy
from nld.modes.quadratic_spec import request_block
from nld.step import StepBackend


def cache_capacity(prompt_length: int, mode: str, params: GenerationParams, block_size: int, device: str) -> int:
    """KV positions one request can need on a backend on `device` (a torch device type): the prompt, the
    output, and the widest step written after them (a step is written after at most prompt +
    max_new_tokens - 1 committed tokens, then cropped)."""
    if mode == "quadratic-spec":
        block = request_block(params, block_size, device)
        widest = block * (block + 1)
    else:
        widest = params.block_length or block_size
    return prompt_length + params.max_new_tokens + widest


def device_type(backend: StepBackend) -> str:
    """The torch device type a backend computes on ("cpu" for one that does not say)."""
    return torch.device(getattr(backend, "device", "cpu")).type


def generate(
    backend: StepBackend,
    prompt_ids: list[int],
    mode: str,
    params: GenerationParams | None = None,
    on_tokens: Callable[[list[int], str], None] | None = None,
    tokenizer: Tokenizer | None = None,
) -> Generation:
    """Decode `prompt_ids` with `mode` (ar | diffusion | linear-spec | quadratic-spec); `on_tokens(ids,
    text)` hears the ids that became final after each step and their text. With the model's
    `tokenizer` the result has its text, and stop strings work."""
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}': choose one of {', '.join(MODES)}")
    params = params or GenerationParams()
    check_prompt_ids(backend.config, prompt_ids)
    check_request(backend.config, mode, len(prompt_ids), params)
    capacity = cache_capacity(len(prompt_ids), mode, params, backend.config.block_size, device_type(backend))
    cache = backend.new_cache(capacity)
    decoding = Decoding(backend.config, prompt_ids, params, cache, mode, backend.has_adapter, tokenizer)
    return run_policy(backend, decoding, MODES[mode], on_tokens)


def load_backend(
    model_dir: str,
    backend: str = "torch",
    dtype: str = "float32",
    device: str = "cpu",
    adapter: bool = True,
    build_dir: str | Path | None = None,
    compile: bool | None = None,
) -> StepBackend:
    """Load a checkpoint folder onto a step backend; `build_dir` (an nld-build output) lets onnxruntime
    reuse its ONNX graphs and tensorrt its engines instead of exporting/building on the fly. `compile`:
    the torch backend's decode steps as compiled graphs (None: the device's measured default)."""
    from nld.backends import BACKENDS, BUILD_ARTIFACTS
    from nld.backends.compiled import resolve_compile
    from nld.checkpoint import load_checkpoint

    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}': choose one of {', '.join(BACKENDS)}")
    artifacts: dict[str, object] = {}
    if compile and backend != "torch":
        raise ValueError(f"--compile applies to the torch backend; the {backend} backend runs built graphs")
    if backend == "torch":
        artifacts["compile"] = resolve_compile(compile, device)
    if build_dir is not None:
        if backend not in BUILD_ARTIFACTS:
            raise ValueError(f"--build applies to the {' and '.join(BUILD_ARTIFACTS)} backends, not '{backend}'")
        keyword, folder = BUILD_ARTIFACTS[backend]
        if not (Path(build_dir) / folder).is_dir():
            raise NLDError(
                f"{Path(build_dir) / folder} not found: is {build_dir} an nld-build output for a GPU target?"
            )
        artifacts[keyword] = Path(build_dir) / folder
    checkpoint = load_checkpoint(model_dir, with_adapter=adapter)
    return BACKENDS[backend].from_checkpoint(checkpoint, dtype=dtype, device=device, **artifacts)
