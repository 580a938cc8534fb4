"""The training recipe: the doubled-sequence mask, the noising, and a loss that learns."""

from __future__ import annotations

import torch

from nld.config import parse_config
from nld.model import NLDTransformer
from nld.tiny.recipe import NoiseSchedule, add_noise, doubled_sequence_visibility, recipe_loss


def test_doubled_sequence_visibility_follows_the_recipe() -> None:
    length, block = 8, 4
    visible = doubled_sequence_visibility(length, block)
    for q in range(2 * length):
        for k in range(2 * length):
            q_noisy, k_noisy = q < length, k < length
            qi, ki = q % length, k % length
            if q_noisy and k_noisy:
                expected = qi // block == ki // block  # own noisy block, bidirectionally
            elif q_noisy:
                expected = ki // block < qi // block  # clean tokens of earlier blocks
            elif k_noisy:
                expected = False  # clean tokens never see noisy ones
            else:
                expected = ki <= qi  # clean: token-causal
            assert bool(visible[q, k]) == expected, (q, k)


def test_noise_keeps_seeds_and_masks_whole_blocks() -> None:
    tokens = torch.arange(10, 74).view(2, 32)
    generator = torch.Generator().manual_seed(0)
    noisy, masked, t = add_noise(tokens, NoiseSchedule(8, keep_seed_prob=1.0, full_mask_prob=1.0), 3, generator)
    assert not masked[:, ::8].any()  # every block's first token stays clean
    assert masked.view(2, 4, 8)[:, :, 1:].all()  # and everything after it is masked
    assert torch.equal(noisy[masked], torch.full((int(masked.sum()),), 3))
    assert torch.equal(t, torch.ones_like(t))
    _, masked, t = add_noise(tokens, NoiseSchedule(8, keep_seed_prob=0.0, full_mask_prob=0.0), 3, generator)
    assert ((t > 0) & (t <= 1)).all() and masked.any() and not masked.all()


def small_model() -> NLDTransformer:
    config = parse_config(
        {
            "model_type": "nemotron_labs_diffusion",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "vocab_size": 40,
            "max_position_embeddings": 64,
            "mask_token_id": 3,
            "rope_parameters": {"rope_theta": 10000.0},
        }
    )
    torch.manual_seed(0)
    model = NLDTransformer(config)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    return model


def doubled_bias(length: int) -> torch.Tensor:
    visible = doubled_sequence_visibility(length, 8)
    return torch.zeros(visible.shape).masked_fill(~visible, float("-inf"))[None, None]


def train_recipe(
    model: NLDTransformer, tokens: torch.Tensor, steps: int, noisy_source: torch.Tensor | None = None
) -> tuple[list[float], dict[str, float]]:
    bias = doubled_bias(tokens.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(steps):
        loss, stats = recipe_loss(model, tokens, NoiseSchedule(8), 3, 0.3, generator, bias, noisy_source)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, stats


def test_recipe_loss_learns_a_repeating_sequence() -> None:
    losses, stats = train_recipe(small_model(), (torch.arange(32) % 7 + 4).repeat(4, 1), 60)
    assert losses[-1] < 0.2 * losses[0]
    assert stats["diffusion_loss"] < 1.0


def test_noisy_half_learns_the_given_source_and_clean_half_the_tokens() -> None:
    model = small_model()
    tokens = (torch.arange(32) % 7 + 4).repeat(4, 1)
    source = (tokens.view(4, 4, 8)[:, :, :1] + 20).expand(4, 4, 8).reshape(4, 32)
    source[:, ::8] = tokens[:, ::8]  # blocks share their seed, as greedy chains do: [s, s + 20, s + 20, ...]
    train_recipe(model, tokens, 120, noisy_source=source)
    drafts = tokens.clone()
    drafts.view(4, 4, 8)[:, :, 1:] = 3  # [seed, MASK x 7] in every block
    positions = torch.arange(32).repeat(2).expand(4, -1)
    with torch.no_grad():
        logits = model.logits(model(torch.cat((drafts, tokens), 1), positions, doubled_bias(32))[0])
    masked = drafts == 3
    assert (logits[:, :32].argmax(-1)[masked] == source[masked]).float().mean() > 0.9
    assert (logits[:, 32:-1].argmax(-1) == tokens[:, 1:]).float().mean() > 0.9


def test_each_phase_carries_its_own_diffusion_weight() -> None:
    from nld.tiny.train import TrainSettings, phases

    plan = phases(TrainSettings(ar_steps=2, nld_steps=3, chain_steps=4, chain_diffusion_weight=1.0))
    assert [(p.name, p.start, p.steps, p.diffusion_weight) for p in plan] == [
        ("ar", 0, 2, 0.0),
        ("nld", 2, 3, 0.3),
        ("chain", 5, 4, 1.0),
    ]
