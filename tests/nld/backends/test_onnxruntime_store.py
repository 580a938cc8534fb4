"""The onnxruntime backend's in-place graph: causal steps read the KV store's buffers and write their new
K/V where they lie (I/O binding), and compute what the plain graph computes over copied caches; steps it
cannot serve go to the plain graph."""

from __future__ import annotations

import copy

import pytest
import torch

from nld.backends.onnxruntime_backend import OnnxRuntimeBackend
from nld.kv_cache import KVCache
from nld.sampling import Sampler
from nld.step import PartialStepError, StepRequest
from tests.nld.helpers import backend_for

CASE = "tiny_b8"
CAPACITY = 48


@pytest.fixture(scope="module")
def backends() -> tuple[OnnxRuntimeBackend, OnnxRuntimeBackend]:
    """The backend with its in-place graph, and the same sessions without it (plain graph, slot-major store)."""
    in_place = backend_for(CASE, kind="onnxruntime")
    assert isinstance(in_place, OnnxRuntimeBackend) and in_place.store_sessions
    plain = copy.copy(in_place)
    plain.store_sessions = {}
    return in_place, plain


def request(cache: KVCache, tokens: list[int], *, causal: bool = True, write: bool = True) -> StepRequest:
    count = len(tokens)
    visibility = torch.ones(count, count, dtype=torch.bool)
    return StepRequest(
        cache=cache,
        token_ids=torch.tensor(tokens),
        positions=torch.arange(cache.length, cache.length + count),
        visibility=visibility.tril() if causal else visibility,
        sampler=Sampler(),
        write_cache=write,
        return_logits=True,
    )


def run(backend: OnnxRuntimeBackend, caches: list[KVCache], steps: list[list[int]], **kwargs: bool) -> list:
    """One batched step of `steps[i]` after `caches[i]`; the logits of every request."""
    results = backend.step([request(cache, tokens, **kwargs) for cache, tokens in zip(caches, steps, strict=True)])
    return [result.logits for result in results]


def counts(backend: OnnxRuntimeBackend) -> tuple[int, int]:
    return backend.store_graph_steps, backend.plain_graph_steps


PROMPTS = [[5, 17, 9, 200, 31], [44, 8, 19], [7, 7, 90, 12, 61, 3, 150]]


def test_causal_steps_run_in_place_and_equal_the_plain_graph(backends) -> None:
    in_place, plain = backends
    stores = {backend: backend.new_store(len(PROMPTS), CAPACITY) for backend in backends}
    assert stores[in_place].layer_major and not stores[plain].layer_major
    caches = {backend: [store.cache(slot) for slot in range(len(PROMPTS))] for backend, store in stores.items()}
    before = counts(in_place)
    for slot, prompt in enumerate(PROMPTS):  # prefills: one row, causal
        got, expected = (run(backend, caches[backend][slot : slot + 1], [prompt])[0] for backend in backends)
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    for step in range(3):  # AR steps of the three requests batched: one token per row
        tokens = [[11 + step], [300 + step], [42 * step + 1]]
        got, expected = (run(backend, caches[backend], tokens) for backend in backends)
        torch.testing.assert_close(torch.stack(got), torch.stack(expected), atol=1e-4, rtol=1e-4)
    assert counts(in_place) == (before[0] + len(PROMPTS) + 3, before[1])
    for cache, reference in zip(caches[in_place], caches[plain], strict=True):
        assert cache.length == reference.length
        length = cache.length
        torch.testing.assert_close(cache.keys[:, :, :length], reference.keys[:, :, :length], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.values[:, :, :length], reference.values[:, :, :length], atol=1e-5, rtol=1e-5)


def test_steps_the_in_place_graph_cannot_serve_run_the_plain_graph(backends) -> None:
    in_place, plain = backends
    store = in_place.new_store(3, CAPACITY)
    caches = [store.cache(slot) for slot in range(3)]
    run(in_place, caches[:2], PROMPTS[:2])  # two rows of several tokens: the kernel takes one such row
    for cache in caches[:2]:
        run(in_place, [cache], [[4, 5, 6]], causal=False)  # bidirectional (a diffusion draft's visibility)
    run(in_place, caches[1:2] + caches[0:1], [[9], [8]])  # one token per row, rows in the store's order
    before = counts(in_place)
    run(in_place, [caches[0], caches[2]], [[1], [2]])  # slot 1 would ride along
    assert counts(in_place) == (before[0], before[1] + 1)
    reference = plain.new_store(3, CAPACITY)
    expected = [reference.cache(slot) for slot in range(3)]
    run(plain, expected[:2], PROMPTS[:2])
    for cache in expected[:2]:
        run(plain, [cache], [[4, 5, 6]], causal=False)
    run(plain, expected[1:2] + expected[0:1], [[9], [8]])
    run(plain, [expected[0], expected[2]], [[1], [2]])
    for cache, want in zip(caches, expected, strict=True):
        assert cache.length == want.length
        length = cache.length
        torch.testing.assert_close(cache.keys[:, :, :length], want.keys[:, :, :length], atol=1e-5, rtol=1e-5)


def test_a_step_past_the_capacity_goes_to_the_plain_graph_and_fails_alone(backends) -> None:
    in_place, _ = backends
    store = in_place.new_store(1, 8)
    cache = store.cache(0)
    run(in_place, [cache], [[1, 2, 3, 4, 5, 6]])
    before = counts(in_place)
    with pytest.raises(PartialStepError) as caught:
        run(in_place, [cache], [[7, 8, 9]])  # 6 + 3 > 8: the in-place graph would write past the buffer
    assert "KV cache full" in str(caught.value.errors[0])
    assert counts(in_place) == (before[0], before[1] + 1) and cache.length == 6


def test_the_in_place_graph_is_optional() -> None:
    """Graphs from a folder without the in-place graph (a build's onnx/): every step on the plain graph."""
    in_place = backend_for(CASE, kind="onnxruntime")
    plain = copy.copy(in_place)
    plain.store_sessions = {}
    cache = plain.new_cache(CAPACITY)
    assert not cache.store.layer_major
    before = counts(plain)
    run(plain, [cache], [PROMPTS[0]])
    assert counts(plain) == (before[0], before[1] + 1)


def test_window_bindings_are_reused_and_let_go_with_their_store(backends) -> None:
    in_place, _ = backends
    store = in_place.new_store(2, CAPACITY)
    caches = [store.cache(slot) for slot in range(2)]
    run(in_place, caches[:1], [PROMPTS[0]])
    run(in_place, caches[1:], [PROMPTS[1]])
    for step in range(2):
        run(in_place, caches, [[3 + step], [4 + step]])
    windows = sorted(key[1:3] for key in in_place._bindings if key[0] == id(store))
    assert windows == [(0, 1), (0, 2), (1, 1)]  # one binding per window, reused by the second AR step
    store_id = id(store)
    del store, caches
    assert not any(key[0] == store_id for key in in_place._bindings)  # the store's memory is not held


def test_a_reused_in_place_graph_of_another_dtype_is_refused(tmp_path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from nld.checkpoint import load_checkpoint
    from nld.errors import NLDError
    from tests.conftest import fixture_dir

    def graph_with_input(name: str, elem_type: int, path) -> None:  # only the inputs are read before refusing
        value = helper.make_tensor_value_info(name, elem_type, [1])
        out = helper.make_tensor_value_info("out", elem_type, [1])
        identity = helper.make_node("Identity", [name], ["out"])
        onnx.save(helper.make_model(helper.make_graph([identity], "g", [value], [out])), path)

    graph_with_input("attention_bias", TensorProto.FLOAT, tmp_path / "step.onnx")
    graph_with_input("cache.0.key", TensorProto.FLOAT16, tmp_path / "step_store.onnx")
    checkpoint = load_checkpoint(fixture_dir(CASE), with_adapter=False)
    with pytest.raises(NLDError, match=r"step_store.onnx computes in torch.float16, not the requested torch.float32"):
        OnnxRuntimeBackend.from_checkpoint(checkpoint, onnx_dir=tmp_path)
