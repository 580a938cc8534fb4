"""The kernels' CPU references against the per-sequence code the policies ran before them (kept here as
the specification), the registered nld:: ops, and the edge cases the CUDA kernels must also meet."""

from __future__ import annotations

import pytest
import torch

from nld.kernels import ops, reference


def spec_commits(confidence: torch.Tensor, is_mask: torch.Tensor, count: int | None, threshold: float | None):
    """diffusion.select_commits before the kernel (one block)."""
    ranked = torch.where(is_mask, confidence, torch.tensor(float("-inf")))
    if threshold is not None:
        count = int(is_mask.sum())
    commit = torch.zeros_like(is_mask)
    if not count:
        return commit
    top = torch.topk(ranked, k=count).indices
    commit[top[0]] = True
    for index in top[1:]:
        if threshold is None or ranked[index] >= threshold:
            commit[index] = True
    return commit


def spec_accepted(verified: list[int], block: list[int]) -> int:
    """linear_spec.accepted_length before the kernel."""
    accepted = 0
    while accepted < len(block) - 1 and verified[accepted] == block[accepted + 1]:
        accepted += 1
    return accepted + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_greedy_top1_is_the_softmax_argmax_without_the_mask_id(dtype: torch.dtype) -> None:
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(0)).to(dtype)
    logits[0, 7] = 100.0  # the mask id would win if it were not excluded
    ids, confidence = ops.top1_confidence(logits, exclude_id=7)
    scores = logits.float()
    scores[:, 7] = float("-inf")
    probs = torch.softmax(scores, dim=-1)
    assert torch.equal(ids, scores.argmax(-1)) and ids.dtype == torch.int64 and int(ids[0]) != 7
    torch.testing.assert_close(confidence, probs.gather(-1, ids[:, None]).squeeze(-1))


def test_top1_ties_go_to_the_lower_index() -> None:
    logits = torch.zeros(2, 10)
    logits[0, [3, 5]] = 2.0
    ids, confidence = reference.top1_confidence(logits)
    assert ids.tolist() == [3, 0] and torch.allclose(confidence[1], torch.tensor(0.1))


def test_gumbel_sampling_is_seeded_and_follows_the_tempered_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 5.0]]).repeat(40000, 1)
    ids, _ = reference.top1_confidence(logits, exclude_id=4, temperature=0.7, seed=1234)
    again, _ = reference.top1_confidence(logits, exclude_id=4, temperature=0.7, seed=1234)
    other, _ = reference.top1_confidence(logits, exclude_id=4, temperature=0.7, seed=1235)
    assert torch.equal(ids, again) and not torch.equal(ids, other) and not (ids == 4).any()
    expected = torch.softmax(logits[0, :4] / 0.7, dim=-1)
    observed = torch.bincount(ids, minlength=5)[:4].float() / len(ids)
    torch.testing.assert_close(observed, expected, atol=0.01, rtol=0)


def test_uniform_noise_is_strictly_inside_the_unit_interval() -> None:
    noise = reference.uniform_noise(7, 100, 1000)
    assert noise.min() > 0 and noise.max() < 1 and abs(float(noise.mean()) - 0.5) < 0.01


@pytest.mark.parametrize("threshold", [None, 0.3, 0.9])
def test_commit_selection_matches_the_policy_on_random_blocks(threshold: float | None) -> None:
    generator = torch.Generator().manual_seed(1)
    confidence = torch.rand(200, 16, generator=generator)
    is_mask = torch.rand(200, 16, generator=generator) < 0.7
    counts = torch.randint(0, 6, (200,), generator=generator)
    counts = torch.minimum(counts, is_mask.sum(1))
    ours = ops.select_commits(confidence, is_mask, counts, threshold is not None, threshold or 0.0)
    for row in range(200):
        expected = spec_commits(confidence[row], is_mask[row], int(counts[row]), threshold)
        assert torch.equal(ours[row], expected), row


def test_commit_selection_edge_cases() -> None:
    confidence = torch.tensor([[0.2, 0.5, 0.5, 0.1], [0.9, 0.9, 0.9, 0.9], [0.3, 0.2, 0.1, 0.0]])
    none_masked = torch.zeros(3, 4, dtype=torch.bool)
    all_masked = torch.ones(3, 4, dtype=torch.bool)
    counts = torch.tensor([1, 2, 4])
    assert not reference.select_commits(confidence, none_masked, counts, False, 0.0).any()
    assert not reference.select_commits(confidence, none_masked, counts, True, 0.5).any()
    top = reference.select_commits(confidence, all_masked, counts, False, 0.0)
    assert top.tolist() == [[False, True, False, False], [True, True, False, False], [True, True, True, True]]
    # threshold above every confidence: only the most confident (the lower index of a tie) commits
    assert reference.select_commits(confidence, all_masked, counts, True, 0.95).sum(1).tolist() == [1, 1, 1]
    assert reference.select_commits(confidence, all_masked, counts, True, 0.95)[1].tolist() == [
        True,
        False,
        False,
        False,
    ]


def test_acceptance_matches_the_policy_including_accept_all_and_accept_none() -> None:
    generator = torch.Generator().manual_seed(2)
    block = torch.randint(0, 3, (500, 8), generator=generator)
    verified = torch.randint(0, 3, (500, 8), generator=generator)
    verified[0, :7] = block[0, 1:]  # accept all: 7 drafts + the bonus
    verified[1, 0] = (block[1, 1] + 1) % 3  # accept none: only the verifier's own token
    accepted, emitted = ops.accept_drafts(block, verified)
    assert int(accepted[0]) == 8 and int(accepted[1]) == 1
    for row in range(500):
        count = spec_accepted(verified[row].tolist(), block[row].tolist())
        assert int(accepted[row]) == count
        assert emitted[row, :count].tolist() == verified[row, :count].tolist()
        assert (emitted[row, count:] == -1).all()


def test_kv_keep_compacts_the_stride_gather_in_place() -> None:
    values = torch.randn(2, 3, 40, 4)
    original = values.clone()
    starts, counts = torch.tensor([5, 10]), torch.tensor([3, 1])
    offsets = torch.tensor([[0, 9, 18], [4, 0, 0]])  # quadratic-spec: rows of B+1 = 9, three accepted
    lengths = ops.kv_keep_(values, starts, offsets, counts)
    assert lengths.tolist() == [8, 11]
    for i, source in enumerate([5, 14, 23]):
        assert torch.equal(values[0, :, 5 + i], original[0, :, source])
    assert torch.equal(values[1, :, 10], original[1, :, 14]) and torch.equal(values[:, :, :5], original[:, :, :5])


def test_kv_crop_clears_only_the_rejected_slots() -> None:
    values = torch.ones(2, 2, 10, 3)
    lengths = ops.kv_crop_(values, torch.tensor([8, 6]), torch.tensor([5, 6]))
    assert lengths.tolist() == [5, 6]
    assert (values[0, :, 5:8] == 0).all() and (values[0, :, :5] == 1).all() and (values[0, :, 8:] == 1).all()
    assert (values[1] == 1).all()


def test_registered_ops_run_the_references_on_cpu() -> None:
    logits = torch.randn(4, 50)
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            torch.ops.nld.top1_confidence(logits, 3, 0.0, 0), reference.top1_confidence(logits, 3), strict=True
        )
    )
    block, verified = torch.tensor([[1, 2, 3]]), torch.tensor([[2, 9, 9]])
    assert torch.ops.nld.accept_drafts(block, verified)[0].tolist() == [2]
    assert not ops.cuda_kernel_loaded("top1_confidence")  # no extension in this process: references run
