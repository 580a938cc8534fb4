"""The `nld::` torch custom ops of the decode-step kernels, and the functions the policies call.

The ops are defined here with their CPU implementation (the references); the CUDA implementation is
registered by the compiled extension (`plugins/torch/nld_ops.cpp`) once `load_extension` loads it.
The policy-facing functions run the op on CUDA tensors when its CUDA kernel is registered, and the
reference otherwise, so results never depend on whether the extension is present.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from nld.errors import NLDError
from nld.kernels import reference

SCHEMAS = {
    "top1_confidence": (
        "top1_confidence(Tensor logits, int exclude_id, float temperature, int seed) -> (Tensor, Tensor)"
    ),
    "select_commits": (
        "select_commits(Tensor confidence, Tensor is_mask, Tensor counts, bool use_threshold, "
        "float threshold) -> Tensor"
    ),
    "accept_drafts": "accept_drafts(Tensor block, Tensor verified) -> (Tensor, Tensor)",
    "kv_keep_": "kv_keep_(Tensor(a!) values, Tensor starts, Tensor offsets, Tensor counts) -> Tensor",
    "kv_crop_": "kv_crop_(Tensor(a!) values, Tensor lengths, Tensor new_lengths) -> Tensor",
}
_LIBRARY = torch.library.Library("nld", "DEF")
for _name, _schema in SCHEMAS.items():
    _LIBRARY.define(_schema)
    _LIBRARY.impl(_name, getattr(reference, _name), "CPU")


_references_only = False


def cuda_kernel_loaded(name: str) -> bool:
    """Whether the extension has registered the CUDA kernel of `nld::<name>`."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"nld::{name}", "CUDA")


@contextmanager
def references_only() -> Iterator[None]:
    """Run the references even where CUDA kernels are loaded (to compare the two)."""
    global _references_only
    previous, _references_only = _references_only, True
    try:
        yield
    finally:
        _references_only = previous


def load_extension(path: str | Path) -> None:
    """Load the compiled extension (a shared library built from plugins/), which registers the CUDA
    kernels of every `nld::` op."""
    path = Path(path)
    if not path.is_file():
        raise NLDError(f"{path}: no such extension library (nld.kernels.extension.build_extension builds one)")
    torch.ops.load_library(str(path))
    require_cuda_kernels(str(path))


def require_cuda_kernels(source: str) -> None:
    """Refuse an extension (`source` names it) that left an nld:: op without its CUDA kernel."""
    missing = [name for name in SCHEMAS if not cuda_kernel_loaded(name)]
    if missing:
        raise NLDError(f"{source} registers no CUDA kernel for nld::{', nld::'.join(missing)}")


def _dispatch(name: str, device: torch.device):
    if device.type == "cuda" and not _references_only and cuda_kernel_loaded(name):
        return getattr(torch.ops.nld, name)
    return getattr(reference, name)


def top1_confidence(
    logits: torch.Tensor, exclude_id: int = -1, temperature: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    return _dispatch("top1_confidence", logits.device)(logits, exclude_id, temperature, seed)


def select_commits(
    confidence: torch.Tensor, is_mask: torch.Tensor, counts: torch.Tensor, use_threshold: bool, threshold: float
) -> torch.Tensor:
    return _dispatch("select_commits", confidence.device)(confidence, is_mask, counts, use_threshold, threshold)


def accept_drafts(block: torch.Tensor, verified: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _dispatch("accept_drafts", block.device)(block, verified)


def kv_keep_(values: torch.Tensor, starts: torch.Tensor, offsets: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return _dispatch("kv_keep_", values.device)(values, starts, offsets, counts)


def kv_crop_(values: torch.Tensor, lengths: torch.Tensor, new_lengths: torch.Tensor) -> torch.Tensor:
    return _dispatch("kv_crop_", values.device)(values, lengths, new_lengths)
