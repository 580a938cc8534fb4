#!/usr/bin/env python3
"""Why quadratic-spec accepts less than linear-spec: draft agreement by position and per-cycle acceptance.

    python research/tiny_model/tiny_draft_agreement.py [--model DIR] [--prompts 32] [--out agreement.json]

On `nld eval`'s held-out prompts (same draw), prints two tables:
1. One-pass draft agreement with greedy AR, k tokens after the last known token s, for the draft shapes
   the two modes use: linear-spec's `[s, MASK x (B-1)]` (s inside the bidirectional block) and
   quadratic-spec's row, s causal in the cache followed by B masks. Measured every `--stride` tokens of
   each prompt's greedy AR output (s = the AR token there).
2. Per decoding cycle, the share of cycles that emit at least k tokens (linear-spec without the
   adapter, quadratic-spec). A linear cycle's first drafted token is 1 ahead of its seed; a quadratic
   cycle's first drafted token (after d_0, the previous forward's AR token) was guessed 2 ahead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nld.evaluate import eval_token_stream, sample_prompts
from nld.generate import generate, load_backend
from nld.kv_cache import KVCache
from nld.models import BUILTIN_MODEL
from nld.modes import GenerationParams
from nld.sampling import Sampler
from nld.step import StepBackend, StepRequest, bidirectional, causal
from nld.tokenizer import NLDTokenizer


def _step(
    backend: StepBackend, cache: KVCache, ids: list[int], start: int, visible: torch.Tensor, write: bool
) -> list[int]:
    """Greedy ids of one step over `ids` placed at `start`."""
    positions = torch.arange(start, start + len(ids))
    request = StepRequest(cache, torch.tensor(ids), positions, visible, Sampler(), write_cache=write)
    return backend.step([request])[0].token_ids.tolist()


def draft_agreement(backend: StepBackend, sequences: list[tuple[int, list[int]]], block: int, stride: int) -> dict:
    """Agreement by distance from the last known token, for both draft shapes."""
    mask = backend.config.mask_token_id
    hits = {"linear": [0] * (block - 1), "quadratic": [0] * block}
    samples = 0
    for prompt_length, sequence in sequences:
        for known in range(prompt_length, len(sequence) - block, stride):
            samples += 1
            cache = backend.new_cache(len(sequence) + block)
            _step(backend, cache, sequence[:known], 0, causal(known), True)
            seed = sequence[known]
            linear = _step(backend, cache, [seed] + [mask] * (block - 1), known, bidirectional(block), False)[1:]
            _step(backend, cache, [seed], known, causal(1), True)
            quadratic = _step(backend, cache, [mask] * block, known + 1, bidirectional(block), False)
            for shape, guesses in (("linear", linear), ("quadratic", quadratic)):
                for k, guess in enumerate(guesses):
                    hits[shape][k] += guess == sequence[known + 1 + k]
    return {shape: [h / samples for h in counts] for shape, counts in hits.items()} | {"samples": samples}


def cycle_tails(backend: StepBackend, prompts: list[list[int]], max_new_tokens: int, block: int) -> dict:
    """Per mode, the share of decoding cycles that emit at least k tokens, k = 1..block."""
    tails = {}
    for mode in ("linear-spec", "quadratic-spec"):
        params = GenerationParams(max_new_tokens=max_new_tokens, use_adapter=False)
        cycles = [n for p in prompts for n in generate(backend, p, mode, params).acceptance_lengths]
        tails[mode] = [sum(n >= k for n in cycles) / len(cycles) for k in range(1, block + 1)]
    return tails


def _markdown(first: str, headers: list[str], rows: dict[str, list[float]]) -> str:
    """A markdown table: one row per key, its shares in the columns (`-` where a row is shorter)."""
    lines = [f"| {first} | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
    for name, shares in rows.items():
        cells = [f"{share:.2f}" for share in shares] + ["-"] * (len(headers) - len(shares))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BUILTIN_MODEL))
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--prompt-length", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    backend = load_backend(args.model)
    tokenizer = NLDTokenizer.from_dir(Path(args.model))
    if tokenizer is None:
        raise SystemExit(f"{args.model}: no tokenizer.json to draw the held-out prompts with")
    stream = eval_token_stream(tokenizer)
    prompts = sample_prompts(stream, args.prompts, args.prompt_length)
    block = backend.config.block_size
    params = GenerationParams(max_new_tokens=args.max_new_tokens)
    sequences = [(len(p), p + generate(backend, p, "ar", params).new_ids) for p in prompts]
    agreement = draft_agreement(backend, sequences, block, args.stride)
    tails = cycle_tails(backend, prompts, args.max_new_tokens, block)
    print(f"draft = greedy AR, k tokens after the last known token ({agreement['samples']} samples)")
    shapes = {shape: agreement[shape] for shape in ("linear", "quadratic")}
    print(_markdown("draft shape", [f"k={k}" for k in range(1, block + 1)], shapes))
    print("\nshare of cycles emitting >= k tokens")
    print(_markdown("mode", [f">={k}" for k in range(1, block + 1)], tails))
    if args.out:
        args.out.write_text(json.dumps({"model": args.model, "agreement": agreement, "cycles": tails}, indent=2) + "\n")


if __name__ == "__main__":
    main()
