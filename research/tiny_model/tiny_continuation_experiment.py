#!/usr/bin/env python
"""Issue 3 experiments: continue the tiny model's final training state for a few steps with one lever,
then measure held-out linear- / quadratic-spec acceptance, tokens per forward and perplexity (the
side-by-side table of docs/tiny_model.md). Nothing in the repository is changed.

    python research/tiny_model/tiny_continuation_experiment.py --targets chain --steps 120 --diffusion-weight 1.0

--targets: `data` (the NLD recipe on the data, i.e. the NLD phase, longer), `chain` (noisy blocks from the
model's own greedy AR continuations), `mixed` (half the rows chains, half data) or `onpolicy` (chains on
windows whose last `--greedy-tokens` tokens are the model's own greedy continuation of the real start,
as the draft sees them while generating; the AR loss stays on the real start) or `guarded` (the shipped
chain phase, `chain_loss`: on-policy chains plus `--guard-weight` x the real windows' next-token loss).
`--steps 0` measures the starting state. The state comes from a finished `scripts/train_tiny.py` work
folder (--work). `--tail-keep-seed-prob` masks the seeds of the greedy tail's blocks more often (the
quadratic-spec draft's shape: masks right after the last known token).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nld.backends import TorchBackend
from nld.corpus import sample_windows
from nld.evaluate import eval_token_stream, perplexity, repeated_ngram_share, sample_prompts
from nld.generate import generate
from nld.models import default_model_dir
from nld.modes import GenerationParams
from nld.step import additive_bias, causal
from nld.tiny import recipe
from nld.tiny.greedy_chains import greedy_block_chains, on_policy_windows
from nld.tiny.recipe import NoiseSchedule, doubled_sequence_visibility, recipe_loss
from nld.tiny.train import TrainSettings, chain_loss, new_model
from nld.tokenizer import NLDTokenizer


def measure(model: torch.nn.Module, stream: list[int], blocks: list[int]) -> dict:
    """16 held-out prompts x 48 tokens (seed 5), no adapter; perplexity on 16 windows of 256 (seed 1);
    the share of generated tokens repeating a 4-gram already seen."""
    model.eval()
    backend = TorchBackend(model)
    prompts = sample_prompts(stream, 16, 64, seed=5)
    result = {}
    for mode in ("linear-spec", "quadratic-spec"):
        for block in blocks:
            params = GenerationParams(max_new_tokens=48, block_length=block, use_adapter=False)
            runs = [generate(backend, prompt, mode, params) for prompt in prompts]
            acceptance = sum(run.mean_acceptance_length for run in runs) / len(runs)
            tpf = sum(len(run.new_ids) for run in runs) / sum(run.forwards for run in runs)
            result[f"{mode}-B{block}"] = {"acceptance": round(acceptance, 3), "tokens_per_forward": round(tpf, 3)}
    # Self-speculation outputs equal greedy AR, so the last runs' outputs measure the AR side's looping.
    repeats = sum(repeated_ngram_share(p, run.new_ids) for p, run in zip(prompts, runs, strict=True))
    result["repeated_4grams"] = round(repeats / len(prompts), 3)
    result["perplexity"] = round(perplexity(backend, sample_prompts(stream, 16, 256, seed=1)), 2)
    model.train()
    return result


def mask_tail_seeds(keep_prob: float) -> None:
    """Make the recipe's noising also mask each second-half block's seed with chance 1 - keep_prob."""
    add_noise = recipe.add_noise

    def noised(tokens: torch.Tensor, schedule: NoiseSchedule, mask_id: int, generator: torch.Generator):
        _, masked, t = add_noise(tokens, schedule, mask_id, generator)
        rows, length = tokens.shape
        seeds = torch.arange(length // 2, length, schedule.block)
        masked = masked.clone()
        masked[:, seeds] |= torch.rand(rows, len(seeds), generator=generator) >= keep_prob
        return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked, t

    recipe.add_noise = noised


def noisy_source(
    args: argparse.Namespace, model: torch.nn.Module, tokens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(windows, what the noisy half reconstructs, which AR targets count) for the data / chain / mixed /
    onpolicy targets; onpolicy windows end in the model's own greedy text."""
    if args.targets == "data":
        return tokens, None, None
    ar_targets = None
    model.eval()
    if args.targets == "onpolicy":  # real start, then the model's own greedy continuation
        tokens, ar_targets = on_policy_windows(model, tokens, args.greedy_tokens)
    source = greedy_block_chains(model, tokens, args.block)
    model.train()
    if args.targets == "mixed":  # half the rows keep their data targets
        half = tokens.shape[0] // 2
        source = source.clone()
        source[half:] = tokens[half:]
    return tokens, source, ar_targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", choices=["data", "chain", "mixed", "onpolicy", "guarded"], default="chain")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--lr", type=float, default=6e-4)
    parser.add_argument("--full-mask-prob", type=float, default=0.3)
    parser.add_argument("--diffusion-weight", type=float, default=0.3)
    parser.add_argument("--greedy-tokens", type=int, default=128, help="onpolicy: generated tail length")
    parser.add_argument("--guard-weight", type=float, default=1.0, help="guarded: real-window AR loss weight")
    parser.add_argument("--keep-seed-prob", type=float, default=0.9, help="chance a block's seed stays clean")
    parser.add_argument("--tail-keep-seed-prob", type=float, default=None, help="the same, greedy-tail blocks")
    parser.add_argument("--block", type=int, default=8, help="training block size")
    parser.add_argument("--eval-blocks", default="8", help="comma-separated block lengths to evaluate")
    parser.add_argument("--work", type=Path, default=Path("build/tiny-train"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings = dataclasses.replace(
        TrainSettings(),
        chain_real_ar_weight=args.guard_weight,
        chain_greedy_tokens=args.greedy_tokens,
        block_size=args.block,
    )
    state = torch.load(args.work / "state.pt", weights_only=False)
    model = new_model(settings, 3, torch.Generator().manual_seed(0))
    model.load_state_dict(state["model"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    optimizer.load_state_dict(state["optimizer"])
    train = torch.from_numpy(np.load(args.work / "tokens.npz")["train"].astype(np.int64))
    generator = torch.Generator().manual_seed(7)
    bias = additive_bias(doubled_sequence_visibility(settings.seq_len, args.block))[None, None]
    schedule = NoiseSchedule(args.block, args.keep_seed_prob, args.full_mask_prob)
    if args.tail_keep_seed_prob is not None:
        mask_tail_seeds(args.tail_keep_seed_prob)
    causal_bias = additive_bias(causal(settings.seq_len))[None, None]
    stream = eval_token_stream(NLDTokenizer.from_dir(default_model_dir()))
    blocks = [int(part) for part in args.eval_blocks.split(",")]
    if args.steps == 0:
        print("start", json.dumps(measure(model, stream, blocks)), flush=True)
        return 0
    began = time.time()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        tokens = sample_windows(train, settings.batch_size, settings.seq_len, generator)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if args.targets == "guarded":
                loss, stats = chain_loss(
                    model, tokens, settings, args.diffusion_weight, schedule, generator, bias, causal_bias
                )
            else:
                tokens, source, ar_targets = noisy_source(args, model, tokens)
                loss, stats = recipe_loss(
                    model, tokens, schedule, 3, args.diffusion_weight, generator, bias, source, ar_targets
                )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (step + 1) % 20 == 0:
            seconds = (time.time() - began) / (step + 1)
            print(f"{args.targets} step {step + 1} loss {loss.item():.3f} {stats} {seconds:.2f}s/step", flush=True)
    print(f"end-{args.targets}", json.dumps(measure(model, stream, blocks)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
