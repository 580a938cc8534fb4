"""Train the built-in tiny NLD model (on the CPU by default): AR warm-up, the NLD recipe, the recipe on greedy chains,
then the draft adapter.

Resumable: the run keeps `state.pt` in its work directory (written atomically every few minutes and at
each phase end); rerunning with the same settings continues where it stopped. Each phase end is also kept
as `after-<phase>.pt`, from which a run with other settings for the later phases can start
(`start_from`), skipping the phases it shares. The finished checkpoint is written to a temporary
directory and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from nld.backends import TorchBackend
from nld.config import parse_config
from nld.corpus import sample_windows, stdlib_corpus
from nld.evaluate import perplexity
from nld.model import NLDTransformer
from nld.step import additive_bias, causal
from nld.tiny.data import SPECIAL_TOKENS, encode_files, train_tokenizer
from nld.tiny.draft_adapter import DraftAdapterSettings, distill_draft_adapter
from nld.tiny.greedy_chains import greedy_block_chains, on_policy_windows
from nld.tiny.model_files import nld_config_json, write_checkpoint
from nld.tiny.recipe import NoiseSchedule, doubled_sequence_visibility, recipe_loss


@dataclass(frozen=True)
class TrainSettings:
    """Every knob of a run; recorded in the checkpoint's training.json."""

    vocab_size: int = 4096
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    intermediate_size: int = 768
    max_position_embeddings: int = 1024
    block_size: int = 8
    seq_len: int = 256
    batch_size: int = 16
    ar_steps: int = 1300
    nld_steps: int = 250
    chain_steps: int = 330
    lr: float = 2e-3
    chain_lr: float = 6e-4
    chain_diffusion_weight: float = 1.0
    chain_greedy_tokens: int = 128
    chain_real_ar_weight: float = 1.0
    chain_max_tail_repeats: float = 1.0  # greedy tails looping more than this keep the real tokens (1.0: off)
    chain_seed: int = -1  # >= 0: reseed the data order and noise when the chain phase starts (-1: carry on)
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    diffusion_weight: float = 0.3
    keep_seed_prob: float = 0.9
    full_mask_prob: float = 0.3
    bf16_autocast: bool = True
    seed: int = 0
    threads: int = 2
    device: str = "cpu"  # the training loop's device; random draws stay on the CPU, so data order matches
    adapter: DraftAdapterSettings = dataclasses.field(default_factory=DraftAdapterSettings)

    def shape(self) -> dict:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.hidden_size // self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "block_size": self.block_size,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        }


Log = Callable[[str], None]


def _atomic_save(obj: object, path: Path) -> None:
    partial = path.with_suffix(".partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def prepare_data(work: Path, settings: TrainSettings, log: Log) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """Tokenizer + token streams (train, held-out), cached in `work` and reused on rerun."""
    corpus = stdlib_corpus()
    tokenizer_path = work / "tokenizer.json"
    streams = work / "tokens.npz"
    if not tokenizer_path.exists() or not streams.exists():
        log(f"corpus: {len(corpus.train)} train / {len(corpus.held_out)} held-out files from {corpus.root}")
        started = time.perf_counter()
        tokenizer = train_tokenizer(corpus.train, settings.vocab_size)
        train = np.concatenate([np.asarray(ids, np.int32) for ids in encode_files(tokenizer, corpus.train)])
        held = np.concatenate([np.asarray(ids, np.int32) for ids in encode_files(tokenizer, corpus.held_out)])
        np.savez(work / "tokens.partial.npz", train=train, held_out=held)
        tokenizer.save(str(work / "tokenizer.partial.json"))
        os.replace(work / "tokens.partial.npz", streams)
        os.replace(work / "tokenizer.partial.json", tokenizer_path)
        log(f"tokenizer + encoding: {time.perf_counter() - started:.0f} s")
    data = np.load(streams)
    train, held = torch.from_numpy(data["train"].astype(np.int64)), torch.from_numpy(data["held_out"].astype(np.int64))
    log(f"tokens: {len(train):,} train, {len(held):,} held-out (vocab {settings.vocab_size})")
    return tokenizer_path, train, held


def new_model(settings: TrainSettings, mask_id: int, generator: torch.Generator) -> NLDTransformer:
    """Randomly initialised NLD network of the configured shape (std 0.02, residual outputs scaled down)."""
    config = parse_config({"model_type": "nemotron_labs_diffusion", "mask_token_id": mask_id, **settings.shape()})
    model = NLDTransformer(config)
    residual_std = 0.02 / math.sqrt(2 * settings.num_hidden_layers)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 1:
                parameter.fill_(1.0)
            else:
                std = residual_std if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return model


@dataclass(frozen=True)
class Phase:
    """A stretch of training with its own objective and learning-rate schedule.
    ar: next-token loss only. nld: the recipe. chain: the recipe with each noisy block built from the
    block's seed and the model's own greedy AR continuation (what the verifier accepts); optionally on
    windows that end in the model's own greedy text (`chain_greedy_tokens`), with a next-token loss on
    the real windows beside it (`chain_real_ar_weight`)."""

    name: str
    start: int
    steps: int
    peak_lr: float
    diffusion_weight: float


def phases(settings: TrainSettings) -> list[Phase]:
    table = [
        ("ar", settings.ar_steps, settings.lr, 0.0),
        ("nld", settings.nld_steps, settings.lr, settings.diffusion_weight),
        ("chain", settings.chain_steps, settings.chain_lr, settings.chain_diffusion_weight),
    ]
    result, start = [], 0
    for name, steps, peak_lr, diffusion_weight in table:
        if steps:
            result.append(Phase(name, start, steps, peak_lr, diffusion_weight))
            start += steps
    return result


# Settings that only one phase reads: a state saved before that phase starts continues under other values.
PHASE_ONLY_SETTINGS = {
    "chain": (
        "chain_steps",
        "chain_lr",
        "chain_diffusion_weight",
        "chain_greedy_tokens",
        "chain_real_ar_weight",
        "chain_max_tail_repeats",
        "chain_seed",
    ),
}


def check_resumable(saved: dict, settings: TrainSettings, step: int, source: Path) -> None:
    """Raise if the state saved at `step` (with settings `saved`) is not where a run with `settings` passes."""
    starts = {phase.name: phase.start for phase in phases(settings)}
    free = {"adapter"}  # the adapter phase always reruns
    for name, fields in PHASE_ONLY_SETTINGS.items():
        if starts.get(name, step) >= step:
            free.update(fields)
    current = dataclasses.asdict(settings)
    # A field added after the state was saved has the default that reproduces the older behaviour.
    saved = {**{k: v for k, v in dataclasses.asdict(TrainSettings()).items() if k not in saved}, **saved}
    differing = sorted(k for k in current.keys() | saved.keys() if k not in free and current.get(k) != saved.get(k))
    if differing:
        raise ValueError(
            f"{source} (step {step}) was made with other values of {', '.join(differing)}, so this run does not "
            "pass through it: use another work folder (or start from an earlier phase end)"
        )


def copy_token_data(work: Path, source: Path) -> None:
    """Copy the tokenizer and token streams of another work folder into `work` where it lacks them."""
    for name in ("tokenizer.json", "tokens.npz"):
        if not (work / name).exists() and (source / name).exists():
            shutil.copyfile(source / name, work / f"{name}.partial")
            os.replace(work / f"{name}.partial", work / name)


def learning_rate(settings: TrainSettings, phase: Phase, step: int) -> float:
    """Linear warm-up then cosine decay to `min_lr_ratio`, restarted at every phase."""
    step -= phase.start
    if step < settings.warmup_steps:
        return phase.peak_lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, phase.steps - settings.warmup_steps)
    return phase.peak_lr * (
        settings.min_lr_ratio + (1 - settings.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    )


def ar_loss(model: NLDTransformer, tokens: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand(tokens.shape[0], -1)
    hidden, _ = model(tokens, positions, bias)
    logits = model.logits(hidden)[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1))
    return loss, {"ar_loss": loss.item()}


def chain_loss(
    model: NLDTransformer,
    tokens: torch.Tensor,
    settings: TrainSettings,
    diffusion_weight: float,
    schedule: NoiseSchedule,
    generator: torch.Generator,
    doubled_bias: torch.Tensor,
    causal_bias: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch of the chain phase: the recipe with noisy blocks from greedy chains, on-policy windows
    if `chain_greedy_tokens`, plus `chain_real_ar_weight` x next-token loss on the real windows."""
    mask_id = model.config.mask_token_id
    real_windows, ar_targets = tokens, None
    was_training = model.training
    model.eval()
    if settings.chain_greedy_tokens:
        tokens, ar_targets = on_policy_windows(
            model, tokens, settings.chain_greedy_tokens, settings.chain_max_tail_repeats
        )
    chains = greedy_block_chains(model, tokens, settings.block_size)
    model.train(was_training)
    loss, stats = recipe_loss(
        model, tokens, schedule, mask_id, diffusion_weight, generator, doubled_bias, chains, ar_targets
    )
    if ar_targets is not None and settings.chain_max_tail_repeats < 1.0:
        stats["on_policy_rows"] = (~ar_targets[:, -1]).float().mean().item()  # rows whose greedy tail stayed
    if settings.chain_real_ar_weight:
        # Guard the verifier: next-token loss on the whole real windows, where the greedy tails stood too.
        real_loss, _ = ar_loss(model, real_windows, causal_bias)
        loss = loss + settings.chain_real_ar_weight * real_loss
        stats["real_ar_loss"] = real_loss.item()
    return loss, stats


def held_out_perplexity(model: NLDTransformer, held: torch.Tensor, length: int, windows: int = 32) -> float:
    """Perplexity over fixed held-out windows, measured through the step seam like `nld eval`."""
    tokens = sample_windows(held, windows, length, torch.Generator().manual_seed(1234))
    return perplexity(TorchBackend(model), tokens.tolist())


def train(
    output: Path,
    work: Path,
    settings: TrainSettings | None = None,
    log: Log = print,
    start_from: Path | None = None,
) -> Path:
    """Run (or resume) the whole recipe and write the checkpoint to `output`. `start_from`: a state saved by
    another run (its `after-<phase>.pt`) to begin with when `work` has none."""
    settings = settings or TrainSettings()
    torch.set_num_threads(settings.threads)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.pt"
    source = start_from if start_from is not None and not state_path.exists() else state_path
    if source is start_from:
        if not start_from.is_file():
            raise FileNotFoundError(f"start_from: no saved state at {start_from}")
        copy_token_data(work, start_from.parent)
        log(f"starting from {start_from}")
    tokenizer_path, train_stream, held_stream = prepare_data(work, settings, log)
    tokenizer = Tokenizer.from_file(str(tokenizer_path))
    pad_id, bos_id, eos_id, mask_id = (tokenizer.token_to_id(t) for t in SPECIAL_TOKENS)
    generator = torch.Generator().manual_seed(settings.seed)
    device = torch.device(settings.device)
    model = new_model(settings, mask_id, generator).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    record = dataclasses.asdict(settings)
    step, history = 0, []
    if source.exists():
        state = torch.load(source, weights_only=False, map_location="cpu")
        check_resumable(state["settings"], settings, state["step"], source)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        step, history = state["step"], state["history"]
        log(f"resuming at step {step}")

    plan = phases(settings)
    total = sum(phase.steps for phase in plan)
    phase_ends = {phase.start + phase.steps for phase in plan}
    causal_bias = additive_bias(causal(settings.seq_len).to(device))[None, None]
    doubled_bias = additive_bias(doubled_sequence_visibility(settings.seq_len, settings.block_size).to(device))[
        None, None
    ]
    schedule = NoiseSchedule(settings.block_size, settings.keep_seed_prob, settings.full_mask_prob)
    last_save = started = time.perf_counter()
    done_at_start = step
    model.train()
    while step < total:
        phase = next(p for p in plan if p.start <= step < p.start + p.steps)
        if step == phase.start and phase.name == "chain" and settings.chain_seed >= 0:
            generator.manual_seed(settings.chain_seed)  # states saved inside the phase carry the reseeded one
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings, phase, step)
        tokens = sample_windows(train_stream, settings.batch_size, settings.seq_len, generator).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16_autocast):
            if phase.name == "ar":
                loss, stats = ar_loss(model, tokens, causal_bias)
            elif phase.name == "nld":
                loss, stats = recipe_loss(
                    model, tokens, schedule, mask_id, phase.diffusion_weight, generator, doubled_bias
                )
            else:
                loss, stats = chain_loss(
                    model, tokens, settings, phase.diffusion_weight, schedule, generator, doubled_bias, causal_bias
                )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        step += 1
        history.append({"step": step, "phase": phase.name, "loss": loss.item(), **stats})
        now = time.perf_counter()
        if step % 25 == 0 or step == total:
            rate = (step - done_at_start) / (now - started)
            eta = (total - step) / rate
            details = " ".join(f"{k} {v:.3f}" for k, v in stats.items())
            log(
                f"[{phase.name}] step {step}/{total} loss {loss.item():.3f} {details} "
                f"| {1 / rate:.2f} s/step, ETA {eta / 60:.1f} min"
            )
        if now - last_save > 180 or step in phase_ends:
            state = {
                "settings": record,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "generator": generator.get_state(),
                "step": step,
                "history": history,
            }
            _atomic_save(state, state_path)
            if step in phase_ends and step < total:
                _atomic_save(state, work / f"after-{phase.name}.pt")
            last_save = now
    model.to("cpu").eval()  # perplexity and the adapter run on the CPU, as `nld eval` does by default
    perplexity = held_out_perplexity(model, held_stream, settings.seq_len)
    log(f"held-out AR perplexity: {perplexity:.2f}")

    adapter = distill_draft_adapter(model, train_stream, held_stream, settings.adapter, work, log)
    weights = {name: tensor for name, tensor in model.state_dict().items() if "lora" not in name}
    config = nld_config_json(settings.shape(), mask_id, bos_id, eos_id, pad_id)
    specials = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "mask_token": "<mask>"}
    report = {
        "settings": record,
        "held_out_perplexity": perplexity,
        "final": history[-1],
        "adapter": adapter.report if adapter else None,
        "python": stdlib_corpus().python_version,
    }
    return write_checkpoint(
        output,
        config,
        weights,
        tokenizer_path,
        specials,
        adapter=(adapter.config, adapter.weights) if adapter and adapter.keep else None,
        extra_files={"training.json": json.dumps(report, indent=2) + "\n"},
    )
