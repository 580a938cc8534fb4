"""Calibration data and the forwards that calibrate: both attention modes the deployment runs.

Data: by default the training split of the built-in tiny model's corpus (the Python standard library's
own source, the files training saw, never the held-out ones); or a user file, plain text or JSONL with
a "text" field per line. It is tokenized with the model's own tokenizer and cut into `samples` windows
of `seq_len` tokens (seeded).

Each calibration forward covers a window as deployment runs it: the first `seq_len - B` tokens causally
(a prefill / AR / verify pass), the last block as a diffusion draft — its seed followed by B-1 mask
tokens, attending to the causal prefix and bidirectionally to itself. Diffusion activations differ from
causal ones (mask embeddings, bidirectional mixing), so calibrating on causal text alone would clip them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from nld.config import NLDConfig
from nld.corpus import read_source, stdlib_corpus
from nld.errors import NLDError
from nld.jsonl import jsonl_records
from nld.model import NLDTransformer
from nld.tokenizer import NLDTokenizer


def read_texts(path: Path | None) -> list[str]:
    """The calibration texts: the built-in corpus's training files, or a .txt / .jsonl file."""
    if path is None:
        return [read_source(file) for file in stdlib_corpus().train]
    path = Path(path)
    if not path.is_file():
        raise NLDError(f"calibration file {path} not found")
    if path.suffix != ".jsonl":
        return [path.read_text(encoding="utf-8", errors="replace")]
    texts = []
    for number, record in jsonl_records(path.read_text(encoding="utf-8"), str(path)):
        if not isinstance(record.get("text"), str):
            raise NLDError(f'{path}, line {number}: needs a string field "text"')
        texts.append(record["text"])
    return texts


def calibration_windows(
    tokenizer: NLDTokenizer, texts: list[str], samples: int, seq_len: int, seed: int = 0
) -> torch.Tensor:
    """[samples, seq_len] token windows drawn (seeded) from the tokenized texts."""
    if samples < 1 or seq_len < 2:
        raise NLDError(f"calibration needs samples >= 1 and seq_len >= 2 (got {samples}, {seq_len})")
    stream = torch.tensor([token for text in texts for token in tokenizer.encode_prompt(text, chat=False)])
    if len(stream) < seq_len + 1:
        raise NLDError(f"the calibration text has {len(stream)} tokens; one window needs {seq_len}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len, (samples,), generator=generator)
    return torch.stack([stream[start : start + seq_len] for start in starts.tolist()])


def two_mode_inputs(windows: torch.Tensor, config: NLDConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, additive bias [1, 1, L, L]): the window's prefix causal, then its last block as a
    diffusion draft `[seed, MASK x (B-1)]` that sees the prefix and itself."""
    length, block = windows.shape[1], config.block_size
    if length <= block:
        raise NLDError(f"calibration windows of {length} tokens leave no causal prefix before a {block}-token block")
    start = length - block
    ids = windows.clone()
    ids[:, start + 1 :] = config.mask_token_id
    visible = torch.ones(length, length, dtype=torch.bool).tril()
    visible[start:, :] = True
    bias = torch.zeros(length, length).masked_fill(~visible, float("-inf"))
    return ids, bias[None, None]


def calibration_loop(
    windows: torch.Tensor, config: NLDConfig, batch: int = 4, progress: bool = True
) -> Callable[[NLDTransformer], None]:
    """The forward loop ModelOpt calls to collect activation statistics."""
    ids, bias = two_mode_inputs(windows, config)
    positions = torch.arange(ids.shape[1]).expand(ids.shape[0], -1)

    def run(model: NLDTransformer) -> None:
        weight = next(model.parameters())
        scores_bias = bias.to(device=weight.device, dtype=weight.dtype)
        with torch.no_grad(), tqdm(total=len(ids), desc="calibrating", unit="sample", disable=not progress) as bar:
            for first in range(0, len(ids), batch):
                rows = slice(first, first + batch)
                model(ids[rows].to(weight.device), positions[rows].to(weight.device), scores_bias)
                bar.update(len(ids[rows]))

    return run
