"""The tiny model's training data: a byte-level BPE tokenizer trained on the stdlib corpus (`nld.corpus`)
and the corpus files encoded with it."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from nld.corpus import read_source

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<mask>")  # ids 0..3: pad, BOS, EOS, mask


def train_tokenizer(files: list[Path], vocab_size: int) -> Tokenizer:
    """Byte-level BPE over `files` with pad/BOS/EOS/mask specials; encoding prepends BOS."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((read_source(path) for path in files), trainer)
    bos = SPECIAL_TOKENS[1]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return tokenizer


def encode_files(tokenizer: Tokenizer, files: list[Path]) -> list[list[int]]:
    """Each file as [BOS] + tokens + [EOS]."""
    eos = tokenizer.token_to_id(SPECIAL_TOKENS[2])
    encodings = tokenizer.encode_batch([read_source(path) for path in files])
    return [[*encoding.ids, eos] for encoding in encodings]
