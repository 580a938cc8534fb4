"""Product defaults: no mask id in outputs, never past max_new_tokens, EOS, seeded sampling."""

from __future__ import annotations

import shutil

import pytest
from safetensors.torch import load_file, save_file

from nld.backends import TorchBackend
from nld.checkpoint import load_checkpoint
from nld.generate import generate
from nld.modes import MODES, GenerationParams
from tests.conftest import fixture_dir
from tests.nld.helpers import backend_for, expected_outputs


@pytest.fixture(scope="module")
def mask_loving_backend(tmp_path_factory: pytest.TempPathFactory) -> TorchBackend:
    """tiny_b8 with the head row of the mask id boosted, so the raw argmax often is the mask id."""
    model = tmp_path_factory.mktemp("mask") / "tiny_b8_mask"
    shutil.copytree(fixture_dir("tiny_b8"), model, ignore=shutil.ignore_patterns("expected"))
    (model / "model.safetensors").chmod(0o644)
    tensors = load_file(model / "model.safetensors")
    tensors["diffusion_head.weight"][100] *= 8.0
    save_file(tensors, model / "model.safetensors")
    return TorchBackend.from_checkpoint(load_checkpoint(model))


@pytest.mark.parametrize("mode", list(MODES))
def test_mask_id_never_emitted_by_default(mask_loving_backend: TorchBackend, mode: str) -> None:
    mask = mask_loving_backend.config.mask_token_id
    prompt = [175, 196, 25, 502, 67]
    reference = GenerationParams(max_new_tokens=24, block_length=8, reference_semantics=True)
    product = GenerationParams(max_new_tokens=24, block_length=8)
    if mode != "diffusion":  # on this model the diffusion passes never rank the mask id first
        assert mask in generate(mask_loving_backend, prompt, mode, reference).new_ids
    result = generate(mask_loving_backend, prompt, mode, product)
    assert mask not in result.new_ids
    assert len(result.new_ids) == 24


def test_linear_spec_never_exceeds_max_new_tokens() -> None:
    entry = expected_outputs("tiny_b8_spec_lora")["prompts"][0]
    assert entry["methods"]["linear_spec"]["n_new"] == 49  # the reference overshoots here
    backend = backend_for("tiny_b8_spec_lora", adapter=False)
    result = generate(backend, entry["prompt_ids"], "linear-spec", GenerationParams(max_new_tokens=48, block_length=8))
    assert result.new_ids == entry["methods"]["linear_spec"]["new_ids"][:48]
    assert result.finish_reason == "length"


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("max_new", [1, 5, 13])
def test_any_max_new_tokens(mode: str, max_new: int) -> None:
    backend = backend_for("tiny_b8")
    result = generate(backend, [5, 6, 7], mode, GenerationParams(max_new_tokens=max_new, block_length=8))
    assert len(result.new_ids) == max_new
    assert result.finish_reason == "length"


@pytest.mark.parametrize("mode", list(MODES))
def test_stops_at_eos(mode: str) -> None:
    entry = expected_outputs("tiny_b8_eos")["prompts"][0]
    backend = backend_for("tiny_b8_eos")
    result = generate(backend, entry["prompt_ids"], mode, GenerationParams(max_new_tokens=48, block_length=8))
    assert result.finish_reason == "stop"
    assert result.new_ids[-1] == 11 and 11 not in result.new_ids[:-1]
    if mode != "diffusion":
        assert result.new_ids == entry["methods"]["ar_generate"]["new_ids"]
    ignoring_eos = GenerationParams(max_new_tokens=48, block_length=8, eos_token_ids=())
    assert len(generate(backend, entry["prompt_ids"], mode, ignoring_eos).new_ids) == 48


@pytest.mark.parametrize("mode", list(MODES))
def test_seeded_sampling_is_reproducible(mode: str) -> None:
    backend = backend_for("tiny_b8")
    prompt = [175, 196, 25, 502, 67]

    def sample(seed: int, top_p: float = 1.0) -> list[int]:
        params = GenerationParams(max_new_tokens=24, block_length=8, temperature=1.0, top_p=top_p, seed=seed)
        return generate(backend, prompt, mode, params).new_ids

    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    greedy = generate(backend, prompt, mode, GenerationParams(max_new_tokens=24, block_length=8)).new_ids
    assert sample(3, top_p=1e-6) == greedy  # top-p that keeps only the argmax is greedy


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown mode 'beam'"):
        generate(backend_for("tiny_b8"), [1, 2], "beam")


def test_prompt_outside_vocabulary_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 512\)"):
        generate(backend_for("tiny_b8"), [1, 600], "ar")


@pytest.mark.parametrize("mode", ["linear-spec", "quadratic-spec"])
def test_acceptance_lengths_count_what_was_emitted(mode: str) -> None:
    """A verify cut short by max_new_tokens reports the tokens it emitted, not all it accepted (the
    released code's count stays available under reference semantics)."""
    from nld.generate import load_backend
    from nld.models import default_model_dir

    backend = load_backend(str(default_model_dir()))
    prompt = [1, 482, 796, 11, 68, 15, 314, 308]
    shorter = 0
    block = backend.config.block_size  # one block length for both (quadratic-spec's defaults differ)
    for limit in range(2, 40, 3):
        result = generate(backend, prompt, mode, GenerationParams(max_new_tokens=limit, block_length=block))
        first = len(result.new_ids) - sum(result.acceptance_lengths)
        assert first in (0, 1) and len(result.new_ids) == limit, (limit, result.acceptance_lengths)
        params = GenerationParams(max_new_tokens=limit, block_length=block, reference_semantics=True)
        reference = generate(backend, prompt, mode, params)
        assert result.acceptance_lengths[:-1] == reference.acceptance_lengths[:-1]
        assert result.acceptance_lengths[-1] <= reference.acceptance_lengths[-1]
        shorter += result.acceptance_lengths[-1] < reference.acceptance_lengths[-1]
    assert shorter  # some limit cut a verify: the product counts what it emitted, the reference all it accepted


def test_quadratic_spec_defaults_to_its_measured_best_block_on_a_cpu() -> None:
    """docs/bench.md, "quadratic-spec's block length on a CPU": B=2 on a CPU, the released default (16,
    capped at the model's block size) elsewhere and under reference semantics; a request's own wins."""
    from nld.modes.quadratic_spec import default_block, request_block

    assert default_block(8, "cpu") == 2 and default_block(1, "cpu") == 1
    assert default_block(8, "cuda") == 8 and default_block(32, "cuda") == 16 and default_block(32, None) == 16
    assert request_block(GenerationParams(block_length=4), 8, "cpu") == 4
    assert request_block(GenerationParams(reference_semantics=True), 8, "cpu") == 8
    from nld.generate import load_backend
    from nld.models import default_model_dir

    backend = load_backend(str(default_model_dir()))  # the built-in model, whose drafts are accepted
    prompt = [1, 482, 796, 11, 68, 15, 314, 308]
    default = generate(backend, prompt, "quadratic-spec", GenerationParams(max_new_tokens=24))
    two = generate(backend, prompt, "quadratic-spec", GenerationParams(max_new_tokens=24, block_length=2))
    eight = generate(backend, prompt, "quadratic-spec", GenerationParams(max_new_tokens=24, block_length=8))
    assert (default.new_ids, default.nfe) == (two.new_ids, two.nfe)
    assert default.nfe != eight.nfe  # the default is not the old one (B=8 here)
