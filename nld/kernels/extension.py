"""Build and load the CUDA extension of the nld:: ops from plugins/ (needs a CUDA build of torch, nvcc,
and CUDA_HOME pointing at the toolkit that holds it). Used by scripts/gpu_check_kernels.py and the GPU
tests; nothing on the CPU path needs it."""

from __future__ import annotations

from pathlib import Path

import torch

from nld.errors import NLDError
from nld.kernels import ops

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


def build_extension(verbose: bool = False) -> None:
    """Compile plugins/ for the local GPU with torch's cpp_extension and load it (registers the CUDA
    kernels of every nld:: op)."""
    if not torch.cuda.is_available():
        raise NLDError("the nld kernels extension needs a CUDA GPU and a CUDA build of torch")
    if not PLUGINS.is_dir():
        raise NLDError(f"{PLUGINS}: no plugins folder (the extension builds from a source checkout)")
    from torch.utils.cpp_extension import load

    major, minor = torch.cuda.get_device_capability()
    suffix = "a" if major >= 9 else ""
    arch = f"{major}{minor}{suffix}"
    sources = [PLUGINS / "torch" / "nld_ops.cpp", *sorted((PLUGINS / "kernels").glob("*.cu"))]
    load(
        name="nld_kernels_ext",
        sources=[str(path) for path in sources],
        extra_include_paths=[str(PLUGINS / "include")],
        extra_cuda_cflags=[f"-gencode=arch=compute_{arch},code=sm_{arch}", "-O3"],
        is_python_module=False,
        verbose=verbose,
    )
    ops.require_cuda_kernels("the extension built from plugins/")
