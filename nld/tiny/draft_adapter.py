"""Distil the draft adapter: a LoRA on o_proj, active only in bidirectional draft passes, trained so
that the one-pass draft of `[seed, MASK x (B-1)]` reproduces the model's own greedy AR continuation
(what the verifier accepts). The adapter is kept only if it raises linear-spec acceptance on held-out
prompts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from nld.backends import TorchBackend
from nld.corpus import sample_windows
from nld.generate import generate
from nld.model import NLDTransformer
from nld.modes import GenerationParams
from nld.tiny.greedy_chains import greedy_ids, greedy_rollouts

Log = Callable[[str], None]


@dataclass(frozen=True)
class DraftAdapterSettings:
    rank: int = 32
    alpha: float = 64.0
    chunks: int = 24
    chunk_rows: int = 256
    context: int = 96
    updates_per_chunk: int = 4
    lr: float = 2e-3
    check_prompts: int = 16
    check_tokens: int = 48
    seed: int = 1


@dataclass
class TrainedAdapter:
    config: dict
    weights: dict[str, torch.Tensor]
    report: dict = field(default_factory=dict)
    keep: bool = False


def _attach(model: NLDTransformer, settings: DraftAdapterSettings, generator: torch.Generator) -> list[torch.Tensor]:
    parameters = []
    for layer in model.encoder.layers:
        attention = layer.self_attn
        in_features = attention.heads * attention.head_dim
        attention.lora_a = (
            torch.randn(settings.rank, in_features, generator=generator) / math.sqrt(in_features)
        ).requires_grad_()
        attention.lora_b = torch.zeros(model.config.hidden_size, settings.rank).requires_grad_()
        attention.lora_scaling = settings.alpha / settings.rank
        parameters += [attention.lora_a, attention.lora_b]
    model.has_adapter = True
    return parameters


def mean_acceptance(model: NLDTransformer, prompts: list[list[int]], tokens: int, use_adapter: bool) -> float:
    """Mean over prompts of greedy linear-spec acceptance length per verify (product defaults)."""
    backend = TorchBackend(model)
    params = GenerationParams(max_new_tokens=tokens, use_adapter=use_adapter)
    means = [generate(backend, prompt, "linear-spec", params).mean_acceptance_length or 0.0 for prompt in prompts]
    return sum(means) / len(means)


def distill_draft_adapter(
    model: NLDTransformer, train: torch.Tensor, held: torch.Tensor, settings: DraftAdapterSettings, work: Path, log: Log
) -> TrainedAdapter:
    """Train the adapter on fresh greedy rollouts chunk by chunk; decide whether to keep it."""
    generator = torch.Generator().manual_seed(settings.seed)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    block = model.config.block_size
    mask_id = model.config.mask_token_id
    check_prompts = sample_windows(held, settings.check_prompts, 64, torch.Generator().manual_seed(99)).tolist()
    baseline = mean_acceptance(model, check_prompts, settings.check_tokens, use_adapter=False)
    log(f"draft adapter: held-out linear-spec acceptance without adapter {baseline:.3f}")
    parameters = _attach(model, settings, generator)
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=0.0)
    started = time.perf_counter()
    steps = settings.chunks * settings.updates_per_chunk
    context = settings.context
    for chunk in range(settings.chunks):
        windows = sample_windows(train, settings.chunk_rows, context + 1, generator)
        targets, past = greedy_rollouts(model, windows, block - 1)
        drafts = torch.full((settings.chunk_rows, block), mask_id)
        drafts[:, 0] = windows[:, -1]
        positions = torch.arange(context, context + block).expand(settings.chunk_rows, -1)
        accuracy = torch.zeros(block - 1)
        for part in torch.arange(settings.chunk_rows).chunk(settings.updates_per_chunk):
            for group in optimizer.param_groups:
                done = chunk * settings.updates_per_chunk
                group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * done / steps))
            bias = torch.zeros(len(part), 1, block, context + block)
            part_past = [(k[part], v[part]) for k, v in past]
            hidden, _ = model(drafts[part], positions[part], bias, part_past, adapter=True)
            logits = model.logits(hidden[:, 1:])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets[part].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            accuracy += (greedy_ids(logits.detach(), mask_id) == targets[part]).float().sum(0)
        accuracy /= settings.chunk_rows
        elapsed = time.perf_counter() - started
        eta = elapsed / (chunk + 1) * (settings.chunks - chunk - 1)
        per_position = " ".join(f"{a:.2f}" for a in accuracy.tolist())
        log(
            f"[adapter] chunk {chunk + 1}/{settings.chunks} loss {loss.item():.3f} "
            f"draft=AR by position {per_position} | ETA {eta / 60:.1f} min"
        )
    weights = {}
    for index, layer in enumerate(model.encoder.layers):
        attention = layer.self_attn
        attention.lora_a, attention.lora_b = attention.lora_a.detach(), attention.lora_b.detach()
        stem = f"encoder.layers.{index}.self_attn.o_proj"
        weights[f"{stem}.lora_A.weight"] = attention.lora_a
        weights[f"{stem}.lora_B.weight"] = attention.lora_b
    with_adapter = mean_acceptance(model, check_prompts, settings.check_tokens, use_adapter=True)
    keep = with_adapter > baseline
    verdict = "kept" if keep else "dropped"
    log(f"draft adapter: acceptance with adapter {with_adapter:.3f} vs {baseline:.3f} without -> {verdict}")
    config = {
        "peft_type": "LORA",
        "r": settings.rank,
        "lora_alpha": settings.alpha,
        "target_modules": ["o_proj"],
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    report = {"acceptance_without": baseline, "acceptance_with": with_adapter, "kept": keep}
    return TrainedAdapter(config, weights, report, keep)
