"""On a CUDA machine: the extension builds from plugins/, its kernels equal the references, and the
policies decode the same tokens with them as without (scripts/gpu_check_kernels.py runs the full check)."""

from __future__ import annotations

import pytest
import torch

from nld.backends import TorchBackend
from nld.checkpoint import load_checkpoint
from nld.generate import generate
from nld.kernels import ops, reference
from nld.model import NLDTransformer
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def extension() -> None:
    from nld.kernels.extension import build_extension

    build_extension()


def test_kernels_equal_the_references_on_random_batches() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(32, 4096, generator=generator)
    ids, confidence = ops.top1_confidence(logits.cuda(), 3)
    ref_ids, ref_confidence = reference.top1_confidence(logits, 3)
    assert torch.equal(ids.cpu(), ref_ids)
    torch.testing.assert_close(confidence.cpu(), ref_confidence)
    confidence_block = torch.rand(64, 16, generator=generator)
    is_mask = torch.rand(64, 16, generator=generator) < 0.5
    counts = torch.randint(0, 5, (64,), generator=generator)
    for use_threshold in (False, True):
        ours = ops.select_commits(confidence_block.cuda(), is_mask.cuda(), counts.cuda(), use_threshold, 0.4)
        assert torch.equal(ours.cpu(), reference.select_commits(confidence_block, is_mask, counts, use_threshold, 0.4))
    block, verified = (
        torch.randint(0, 3, (64, 8), generator=generator),
        torch.randint(0, 3, (64, 8), generator=generator),
    )
    ours = ops.accept_drafts(block.cuda(), verified.cuda())
    expected = reference.accept_drafts(block, verified)
    assert all(torch.equal(a.cpu(), b) for a, b in zip(ours, expected, strict=True))


@pytest.mark.parametrize("mode", MODES)
def test_policies_decode_the_same_with_kernels_and_references(mode: str) -> None:
    checkpoint = load_checkpoint(default_model_dir())
    backend = TorchBackend(NLDTransformer.from_checkpoint(checkpoint, torch.float32, "cuda"))
    params = GenerationParams(max_new_tokens=24)
    prompt = list(range(5, 40))
    with_kernels = generate(backend, prompt, mode, params).new_ids
    with ops.references_only():
        assert generate(backend, prompt, mode, params).new_ids == with_kernels
