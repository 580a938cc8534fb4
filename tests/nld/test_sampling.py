"""Token selection: greedy, banned ids, confidence, top-p and seeded sampling."""

from __future__ import annotations

import pytest
import torch

from nld.sampling import Sampler, seeded_generator, select_tokens


def test_greedy_with_and_without_banned_id() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.0, 1.0]])
    ids, confidence = select_tokens(logits, Sampler())
    assert ids.tolist() == [1]
    assert confidence.item() == pytest.approx(torch.softmax(logits, -1)[0, 1].item())
    ids, confidence = select_tokens(logits, Sampler(banned_ids=(1,)))
    assert ids.tolist() == [2]
    assert confidence.item() == pytest.approx(torch.softmax(torch.tensor([0.0, 4.0, 1.0]), -1)[1].item())


def test_top_p_keeps_the_smallest_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    sampler = Sampler(temperature=1.0, top_p=0.7, generator=seeded_generator(0))
    drawn = {int(select_tokens(probs.log(), sampler)[0]) for _ in range(200)}
    assert drawn == {0, 1}


def test_seeded_sampling_repeats_and_follows_temperature() -> None:
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    first = select_tokens(logits, Sampler(temperature=1.0, generator=seeded_generator(7)))[0]
    again = select_tokens(logits, Sampler(temperature=1.0, generator=seeded_generator(7)))[0]
    assert torch.equal(first, again)
    cold = select_tokens(logits, Sampler(temperature=1e-4, generator=seeded_generator(7)))[0]
    assert torch.equal(cold, logits.argmax(-1))


@pytest.mark.parametrize(("temperature", "top_p"), [(-1.0, 1.0), (1.0, 0.0), (1.0, 1.5)])
def test_bad_sampling_parameters(temperature: float, top_p: float) -> None:
    with pytest.raises(ValueError):
        Sampler(temperature=temperature, top_p=top_p)


def test_top_k_and_min_p_keep_only_the_likely_ids() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]).repeat(400, 1)
    top2 = Sampler(temperature=1.0, top_k=2, generator=generator)
    assert set(select_tokens(logits, top2)[0].tolist()) == {0, 1}
    # min_p 0.1 keeps the ids at least a tenth as likely as the best (temperature 1: ids 0, 1 and 2)
    probs = torch.softmax(logits[0], dim=-1)
    kept = {i for i, p in enumerate(probs.tolist()) if p >= 0.1 * probs.max().item()}
    min_p = Sampler(temperature=1.0, min_p=0.1, generator=generator)
    assert set(select_tokens(logits, min_p)[0].tolist()) == kept
    for sampler in (Sampler(temperature=1.0, top_k=1), Sampler(temperature=1.0, min_p=1.0)):
        assert select_tokens(logits[:8], sampler)[0].tolist() == [0] * 8  # one id left: the greedy one


def test_top_k_and_min_p_bounds_are_named() -> None:
    from nld.limits import ParameterError
    from nld.modes import GenerationParams

    with pytest.raises(ParameterError, match="top_k"):
        GenerationParams(top_k=-1)
    with pytest.raises(ParameterError, match="min_p"):
        GenerationParams(min_p=1.5)
