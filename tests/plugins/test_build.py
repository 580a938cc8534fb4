"""The CUDA kernels compile for every deployment architecture (compile only: no GPU here), with CMake
and nvcc as CI has them; the torch binding passes a syntax check against torch's headers."""

from __future__ import annotations

import json
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


def test_kernels_compile_with_the_flags_of_torch_extension_builds(tmp_path: Path) -> None:
    """`nld.kernels.extension` builds through torch's cpp_extension, whose nvcc flags remove the implicit
    float <-> __half / __nv_bfloat16 conversions: the kernels must not rely on them."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS

    nvcc = need("nvcc")
    for kernel in KERNELS:
        command = [nvcc, "-std=c++17", *COMMON_NVCC_FLAGS, "-I", str(PLUGINS / "include")]
        command += ["-gencode", "arch=compute_90a,code=sm_90a", "-c", str(PLUGINS / "kernels" / kernel)]
        command += ["-o", str(tmp_path / f"{kernel}.o")]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, (kernel, result.stderr[-4000:])


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


def test_tensorrt_plugins_build_when_headers_are_given(tmp_path: Path) -> None:
    """Only with TensorRT headers (NLD_TENSORRT_ROOT=<dir with include/NvInferRuntime.h>): the IPluginV3
    wrappers compile and link into a library exporting getCreators for TensorRT's plugin loader."""
    root = os.environ.get("NLD_TENSORRT_ROOT")
    if not root or not (Path(root) / "include" / "NvInferRuntime.h").exists():
        pytest.skip("no TensorRT headers (set NLD_TENSORRT_ROOT); the pip wheels ship none")
    cmake, nvcc = need("cmake"), need("nvcc")
    build = tmp_path / "build"
    configure = [
        cmake,
        "-S",
        str(PLUGINS),
        "-B",
        str(build),
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        f"-DTENSORRT_ROOT={root}",
    ]
    configure += ["-DNLD_CUDA_ARCHITECTURES=120a"]
    subprocess.run(configure, check=True, capture_output=True, text=True)
    result = subprocess.run([cmake, "--build", str(build), "-j2"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    library = build / "libnld_trt_plugins.so"
    symbols = subprocess.run(["nm", "-D", str(library)], capture_output=True, text=True).stdout
    assert " T getCreators" in symbols and " T setLoggerFinder" in symbols
    # TensorRT-RTX loads it and builds an SM120 engine around each plugin (its ONNX parser dlopens the
    # unversioned libtensorrt_rtx.so, which the wheel lacks: a link in a private folder stands in).
    import tensorrt_rtx_libs

    links = tmp_path / "links"
    links.mkdir()
    (links / "libtensorrt_rtx.so").symlink_to(Path(tensorrt_rtx_libs.__file__).parent / "libtensorrt_rtx.so.1")
    script = Path(__file__).parent / "trt_engine_check.py"
    environment = {**os.environ, "LD_LIBRARY_PATH": f"{links}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    run = subprocess.run([sys.executable, str(script), str(library)], capture_output=True, text=True, env=environment)
    assert run.returncode == 0, run.stderr[-4000:]
    results = {entry["plugin"]: entry for entry in map(json.loads, run.stdout.splitlines())}
    assert all(entry["built"] for entry in results.values()), results
    assert "logits (Half[-1,4096]) -> ids (Int64[-1]), confidence (Float[-1])" in results["NldTop1Confidence"]["layer"]
    assert "-> commit (Bool[-1,8])" in results["NldSelectCommits"]["layer"]
    assert "-> accepted (Int64[-1]), emitted (Int64[-1,8])" in results["NldAcceptDrafts"]["layer"]
    assert "-> kept (Half[-1,12,64,32])" in results["NldKvKeep"]["layer"]
    assert "-> cropped (BFloat16[-1,12,64,32])" in results["NldKvCrop"]["layer"]
