"""Quantize a checkpoint in memory and measure what it costs each mode (`nld quant-report`)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from nld.backends import TorchBackend
from nld.evaluate import eval_token_stream, sample_prompts
from nld.model import NLDTransformer
from nld.quantize.ptq import prepare, quantize_model
from nld.quantize.recipes import MODELOPT_VERSION
from nld.quantize.report import quality_report


@dataclass(frozen=True)
class EvidenceRequest:
    model: Path
    precision: str
    calibration: Path | None = None  # None: the built-in corpus's training split
    samples: int = 64
    seq_len: int = 256
    kv_cache: str | None = None
    prompts: int = 32
    prompt_length: int = 64
    max_new_tokens: int = 64
    perplexity_windows: int = 32
    device: str = "cpu"


def run_evidence(request: EvidenceRequest, progress: bool = True) -> dict:
    """The quality report of `request.precision` against the unquantized model (float32 compute)."""
    run = prepare(
        request.model,
        request.precision,
        request.calibration,
        request.samples,
        request.seq_len,
        request.device,
        with_adapter=True,
    )
    recipe, tokenizer = run.recipe, run.tokenizer
    reference_model = NLDTransformer.from_checkpoint(run.checkpoint, torch.float32, request.device)
    quantized_model = quantize_model(copy.deepcopy(reference_model), recipe, run.windows, request.kv_cache, progress)
    import modelopt.torch.quantization as mtq

    mtq.fold_weight(quantized_model)  # quantize the weights once, not in every forward (same numbers)
    stream = eval_token_stream(tokenizer)
    report = quality_report(
        TorchBackend(reference_model),
        TorchBackend(quantized_model),
        sample_prompts(stream, request.prompts, request.prompt_length),
        sample_prompts(stream, request.perplexity_windows, 256, seed=1),
        request.max_new_tokens,
    )
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()}
    return {"settings": settings, "recipe": asdict(recipe), "modelopt": MODELOPT_VERSION, **report}
