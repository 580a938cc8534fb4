"""Evaluate a model per decoding mode on held-out prompts: perplexity, tokens/forward, acceptance, speed.

Prompts come from the held-out split of the tiny model's corpus (Python stdlib files that training
never sees), tokenized with the model's own tokenizer, or from token-id lists given by the caller.
"""

from __future__ import annotations

import json
import math
import platform
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from nld.corpus import evaluation_files, read_source, sample_windows, stdlib_corpus
from nld.generate import generate
from nld.modes import MODES, GenerationParams
from nld.modes.quadratic_spec import default_block
from nld.sampling import Sampler
from nld.step import StepBackend, StepRequest, causal, step_one
from nld.tokenizer import NLDTokenizer


@dataclass
class ModeReport:
    mode: str
    adapter: bool
    prompts: int
    new_tokens: int
    forwards: int
    nfe: int
    tokens_per_forward: float
    characters_per_forward: float | None
    mean_acceptance_length: float | None
    tokens_per_second: float
    equals_ar: int
    repeated_4grams: float


def repeated_ngram_share(prompt: list[int], output: list[int], n: int = 4) -> float:
    """Share of the generated tokens that complete an n-gram already present earlier in prompt + output.
    High values mean looping text, which any draft predicts easily: read acceptance next to it."""
    sequence = prompt + output
    seen: set[tuple[int, ...]] = set()
    repeats = 0
    for end in range(n, len(sequence) + 1):
        gram = tuple(sequence[end - n : end])
        if end > len(prompt) and gram in seen:
            repeats += 1
        seen.add(gram)
    return repeats / len(output) if output else 0.0


def held_out_token_stream(tokenizer: NLDTokenizer, files: list[Path]) -> list[int]:
    """The files' text as one token stream (no specials), for drawing evaluation windows."""
    stream: list[int] = []
    for path in files:
        stream += tokenizer.tokenizer.encode(read_source(path), add_special_tokens=False).ids
    return stream


def eval_token_stream(tokenizer: NLDTokenizer, stdlib: Path | None = None) -> list[int]:
    """The stream `nld eval` draws its prompts from: the held-out split of the stdlib corpus (this
    interpreter's, or the one under `stdlib`), minus the generated codec tables."""
    return held_out_token_stream(tokenizer, evaluation_files(stdlib_corpus(stdlib)))


def sample_prompts(stream: list[int], count: int, length: int, seed: int = 0) -> list[list[int]]:
    """`count` seeded windows of `length` tokens from `stream`."""
    return sample_windows(torch.tensor(stream), count, length, torch.Generator().manual_seed(seed)).tolist()


def progress(items: list, description: str) -> Iterator:
    """`items` with a progress bar on stderr when it is a terminal (none in logs and tests)."""
    return iter(tqdm(items, desc=description, unit="prompt", file=sys.stderr, disable=None, leave=False))


def perplexity(backend: StepBackend, windows: list[list[int]]) -> float:
    """exp(mean next-token cross-entropy) of causal forwards over `windows`."""
    total, count = 0.0, 0
    for window in progress(windows, "perplexity"):
        ids = torch.tensor(window)
        request = StepRequest(
            backend.new_cache(len(window)),
            ids,
            torch.arange(len(window)),
            causal(len(window)),
            Sampler(),
            return_logits=True,
        )
        logits = step_one(backend, request).logits
        assert logits is not None
        total += F.cross_entropy(logits[:-1].float(), ids[1:], reduction="sum").item()
        count += len(window) - 1
    return math.exp(total / count)


def evaluate_modes(
    backend: StepBackend,
    prompts: list[list[int]],
    max_new_tokens: int,
    block_length: int | None = None,
    decode: Callable[[list[int]], str] | None = None,
    outputs: dict[tuple[str, bool], list[list[int]]] | None = None,
) -> list[ModeReport]:
    """Run every mode (and linear-spec without the adapter, when there is one) on every prompt, at
    `block_length` (default: the model's block size, and quadratic-spec at the released default
    whatever the device, so that the model's quality reads the same everywhere). With `decode`, also
    report characters per forward (comparable across tokenizers); with `outputs`, collect each run's
    generated ids under (mode, its report's adapter flag)."""
    runs = [(mode, True) for mode in MODES]
    if backend.has_adapter:
        runs.insert(runs.index(("linear-spec", True)) + 1, ("linear-spec", False))
    reference: list[list[int]] = []
    reports = []
    for mode, adapter in runs:
        block = block_length or (default_block(backend.config.block_size) if mode == "quadratic-spec" else None)
        params = GenerationParams(max_new_tokens=max_new_tokens, block_length=block, use_adapter=adapter)
        label = mode if adapter or mode != "linear-spec" else "linear-spec (no adapter)"
        results = [generate(backend, prompt, mode, params) for prompt in progress(prompts, f"eval {label}")]
        if mode == "ar":
            reference = [r.new_ids for r in results]
        acceptances = [r.mean_acceptance_length for r in results if r.mean_acceptance_length is not None]
        tokens = sum(len(r.new_ids) for r in results)
        forwards = sum(r.forwards for r in results)
        reports.append(
            ModeReport(
                mode=mode,
                adapter=adapter and backend.has_adapter and mode == "linear-spec",
                prompts=len(prompts),
                new_tokens=tokens,
                forwards=forwards,
                nfe=sum(r.nfe for r in results),
                tokens_per_forward=tokens / forwards,
                characters_per_forward=(sum(len(decode(r.new_ids)) for r in results) / forwards) if decode else None,
                mean_acceptance_length=sum(acceptances) / len(acceptances) if acceptances else None,
                tokens_per_second=tokens / sum(r.seconds for r in results),
                equals_ar=sum(r.new_ids == ref for r, ref in zip(results, reference, strict=True)),
                repeated_4grams=sum(repeated_ngram_share(p, r.new_ids) for p, r in zip(prompts, results, strict=True))
                / len(prompts),
            )
        )
        if outputs is not None:
            outputs[(mode, reports[-1].adapter)] = [r.new_ids for r in results]
    return reports


def markdown_table(reports: list[ModeReport], ppl: float) -> str:
    lines = [
        f"held-out AR perplexity: {ppl:.2f}",
        "",
        "| mode | draft adapter | tokens/forward | chars/forward | mean acceptance | tokens/s | greedy output = AR "
        "| repeated 4-grams |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        acceptance = "-" if r.mean_acceptance_length is None else f"{r.mean_acceptance_length:.2f}"
        adapter = "yes" if r.adapter else ("no" if r.mode == "linear-spec" else "-")
        chars = "-" if r.characters_per_forward is None else f"{r.characters_per_forward:.2f}"
        lines.append(
            f"| {r.mode} | {adapter} | {r.tokens_per_forward:.2f} | {chars} | {acceptance} | {r.tokens_per_second:.0f} "
            f"| {r.equals_ar}/{r.prompts} | {r.repeated_4grams:.2f} |"
        )
    return "\n".join(lines)


def write_report(path: Path, reports: list[ModeReport], ppl: float, settings: dict) -> None:
    record = {
        "held_out_perplexity": ppl,
        "settings": settings,
        "machine": {"processor": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "modes": [asdict(r) for r in reports],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
