"""The NLD training recipe: the doubled sequence [x_t | x_0], its attention mask, noising, and the loss.

Noisy tokens attend to their own noisy block and to the clean tokens of earlier blocks; clean tokens
attend token-causally to clean tokens. Loss = AR cross-entropy on the clean half + `diffusion_weight` x
cross-entropy on the masked noisy positions weighted by 1/t, summed and divided by the number of
tokens that carry a loss (the global token count).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nld.model import NLDTransformer


def doubled_sequence_visibility(length: int, block: int) -> torch.Tensor:
    """Bool [2L, 2L]: rows/cols 0..L-1 are x_t (noisy), L..2L-1 are x_0 (clean), same positions."""
    index = torch.arange(length)
    block_of = index // block
    noisy_to_noisy = block_of[:, None] == block_of[None, :]
    noisy_to_clean = block_of[:, None] > block_of[None, :]
    clean_to_clean = index[:, None] >= index[None, :]
    visible = torch.zeros(2 * length, 2 * length, dtype=torch.bool)
    visible[:length, :length] = noisy_to_noisy
    visible[:length, length:] = noisy_to_clean
    visible[length:, length:] = clean_to_clean
    return visible


@dataclass(frozen=True)
class NoiseSchedule:
    """How blocks are masked. Inference drafts `[known seed, MASK x (B-1)]`, so by default the first
    token of a block stays clean and a share of blocks is masked entirely after it."""

    block: int
    keep_seed_prob: float = 0.9
    full_mask_prob: float = 0.3
    eps: float = 1e-3


def add_noise(
    tokens: torch.Tensor, schedule: NoiseSchedule, mask_id: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tokens [N, L] -> (noisy tokens, masked bool [N, L], per-token mask probability t [N, L]).
    The draws come from `generator` (on its own device) and move to the tokens' device."""
    rows, length = tokens.shape
    blocks = length // schedule.block
    t = torch.rand(rows, blocks, 1, generator=generator) * (1 - schedule.eps) + schedule.eps
    full = torch.rand(rows, blocks, 1, generator=generator) < schedule.full_mask_prob
    t = torch.where(full, torch.ones_like(t), t)
    masked = torch.rand(rows, blocks, schedule.block, generator=generator) < t
    keep_seed = torch.rand(rows, blocks, generator=generator) < schedule.keep_seed_prob
    masked[:, :, 0] &= ~keep_seed
    masked = masked.view(rows, length).to(tokens.device)
    t = t.expand(rows, blocks, schedule.block).reshape(rows, length).to(tokens.device)
    return torch.where(masked, torch.full_like(tokens, mask_id), tokens), masked, t


def recipe_loss(
    model: NLDTransformer,
    tokens: torch.Tensor,
    schedule: NoiseSchedule,
    mask_id: int,
    diffusion_weight: float,
    generator: torch.Generator,
    bias: torch.Tensor,
    noisy_source: torch.Tensor | None = None,
    ar_targets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch of the recipe. `bias` is the additive form of `doubled_sequence_visibility`.
    `noisy_source` (default: `tokens`) is what the noisy half is noised from and must reconstruct;
    the clean half always reads `tokens`. `ar_targets` (bool [N, L-1], default all) says which
    next-token predictions of the clean half carry the AR loss."""
    rows, length = tokens.shape
    source = tokens if noisy_source is None else noisy_source
    noisy, masked, t = add_noise(source, schedule, mask_id, generator)
    positions = torch.arange(length, device=tokens.device).repeat(2).expand(rows, -1)
    hidden, _ = model(torch.cat((noisy, tokens), dim=1), positions, bias)
    logits = model.logits(hidden)
    ar_scored = (
        torch.ones(rows, length - 1, dtype=torch.bool, device=tokens.device) if ar_targets is None else ar_targets
    )
    ar_logits = logits[:, length:-1][ar_scored]
    ar_sum = F.cross_entropy(ar_logits.float(), tokens[:, 1:][ar_scored], reduction="sum")
    noisy_logits = logits[:, :length][masked]
    diffusion_terms = F.cross_entropy(noisy_logits.float(), source[masked], reduction="none") / t[masked]
    diffusion_sum = diffusion_terms.sum()
    ar_count, masked_count = ar_logits.shape[0], int(masked.sum())
    loss = (ar_sum + diffusion_weight * diffusion_sum) / (ar_count + masked_count)
    stats = {
        "ar_loss": ar_sum.item() / ar_count,
        "diffusion_loss": (F.cross_entropy(noisy_logits.float(), source[masked]).item() if masked_count else 0.0),
    }
    return loss, stats
