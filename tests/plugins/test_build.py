"""The CUDA kernels compile for every deployment architecture (compile only: no GPU here), with CMake
and nvcc as CI has them; the torch binding passes a syntax check against torch's headers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
ARCHITECTURES = ("sm_90a", "sm_100a", "sm_120a", "sm_121a")
KERNELS = sorted(path.name for path in (PLUGINS / "kernels").glob("*.cu"))


def need(tool: str) -> str:
    """The tool's path (the virtual environment's own first: cmake comes with the dev extras); CI must
    have it (fail), elsewhere its absence skips."""
    beside = Path(sys.executable).parent / tool
    path = str(beside) if beside.exists() else shutil.which(tool)
    if path is None:
        message = f"{tool} is not on PATH"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def test_cmake_builds_every_kernel_for_every_architecture(tmp_path: Path) -> None:
    cmake, nvcc = need("cmake"), need("nvcc")
    build = tmp_path / "build"
    configure = [cmake, "-S", str(PLUGINS), "-B", str(build), f"-DCMAKE_CUDA_COMPILER={nvcc}"]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    result = subprocess.run([cmake, "--build", str(build), "-j2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    archive = build / "libnld_kernels.a"
    members = subprocess.run(["ar", "t", str(archive)], check=True, capture_output=True, text=True).stdout.split()
    assert sorted(members) == sorted(f"{name}.o" for name in KERNELS)
    subprocess.run(["ar", "x", str(archive)], cwd=tmp_path, check=True)
    for member in members:
        code = (tmp_path / member).read_bytes()
        for architecture in ARCHITECTURES:  # the embedded cubin of each target
            assert architecture.encode() in code, (member, architecture)


def test_kernels_compile_without_warnings(tmp_path: Path) -> None:
    nvcc = need("nvcc")
    for kernel in KERNELS:
        command = [nvcc, "-std=c++17", "-I", str(PLUGINS / "include"), "-c", str(PLUGINS / "kernels" / kernel)]
        command += [
            "-o",
            str(tmp_path / f"{kernel}.o"),
            "-Werror=all-warnings",
            "-gencode",
            "arch=compute_120a,code=sm_120a",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-4000:]


def test_torch_binding_passes_a_syntax_check(tmp_path: Path) -> None:
    """The CPU torch wheel lacks CUDA's build-configuration header; an empty one stands in for the check."""
    from torch.utils.cpp_extension import include_paths

    compiler, nvcc = need("g++"), need("nvcc")
    homes = [os.environ.get("CUDA_HOME", ""), str(Path(nvcc).resolve().parents[1]), "/usr/local/cuda"]
    found = [
        Path(home) / "include" for home in homes if home and (Path(home) / "include" / "cuda_runtime_api.h").exists()
    ]
    if not found:
        pytest.fail(f"no CUDA include folder with cuda_runtime_api.h beside {nvcc} (set CUDA_HOME)")
    cuda_include = found[0]
    stub = tmp_path / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("")
    includes = [f"-I{path}" for path in [*include_paths(), tmp_path, cuda_include, PLUGINS / "include"]]
    command = [compiler, "-std=c++20", "-fsyntax-only", *includes, str(PLUGINS / "torch" / "nld_ops.cpp")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
