#!/usr/bin/env python3
"""How much a training state's greedy continuations loop, against the real text they replace.

    python research/tiny_model/tiny_tail_repeats.py --state build/tiny-w4-work/after-nld.pt [--windows 32]

Draws training windows (seq_len tokens, from the state's work folder), replaces the last
chain_greedy_tokens of each with the model's greedy continuation (as the chain phase's on-policy windows
do), and prints the quartiles of the share of tail tokens that repeat a 4-gram already in the window, for
the greedy tails and for the real ones (the measure `chain_max_tail_repeats` filters on).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

from nld.corpus import sample_windows
from nld.evaluate import repeated_ngram_share
from nld.tiny.data import SPECIAL_TOKENS
from nld.tiny.greedy_chains import greedy_rollouts
from nld.tiny.train import TrainSettings, new_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state", type=Path, required=True, help="a state.pt or after-<phase>.pt of train_tiny.py")
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    state = torch.load(args.state, weights_only=False, map_location="cpu")
    fields = {field.name for field in dataclasses.fields(TrainSettings)} - {"adapter"}
    settings = dataclasses.replace(TrainSettings(), **{k: v for k, v in state["settings"].items() if k in fields})
    model = new_model(settings, SPECIAL_TOKENS.index("<mask>"), torch.Generator().manual_seed(0))
    model.load_state_dict(state["model"])
    model.eval()
    stream = np.load(args.state.parent / "tokens.npz")["train"].astype(np.int64)
    windows = sample_windows(
        torch.from_numpy(stream), args.windows, settings.seq_len, torch.Generator().manual_seed(args.seed)
    )
    real = settings.seq_len - settings.chain_greedy_tokens
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16_autocast):
        tails, _ = greedy_rollouts(model, windows[:, :real], settings.chain_greedy_tokens)
    prefixes = windows[:, :real].tolist()
    greedy = [repeated_ngram_share(p, t) for p, t in zip(prefixes, tails.tolist(), strict=True)]
    data = [repeated_ngram_share(p, t) for p, t in zip(prefixes, windows[:, real:].tolist(), strict=True)]
    print(f"{args.state} (step {state['step']}): {args.windows} windows, tail {settings.chain_greedy_tokens} tokens")
    print("repeated 4-gram share of the tail | q25 | median | q75")
    for name, shares in (("greedy", greedy), ("real", data)):
        q25, median, q75 = np.quantile(shares, [0.25, 0.5, 0.75])
        print(f"{name} | {q25:.2f} | {median:.2f} | {q75:.2f}")


if __name__ == "__main__":
    main()
