"""Streaming conversion: standard safetensors out, and peak memory bounded by the largest tensor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nld.convert.safetensors_stream import write_streaming

REPO = Path(__file__).resolve().parents[3]


def test_streamed_file_is_standard_safetensors(tmp_path: Path) -> None:
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.float16).view(2, 3),
    }
    written = write_streaming(
        tmp_path / "x.safetensors", [(k, tuple(v.shape), v.dtype) for k, v in tensors.items()], tensors.__getitem__
    )
    assert written == 3 * 5 * 4 + 7 * 2 + 6 * 2
    loaded = load_file(tmp_path / "x.safetensors")
    for name, tensor in tensors.items():
        assert torch.equal(loaded[name], tensor), name
    with pytest.raises(ValueError, match="declared"):
        write_streaming(tmp_path / "y.safetensors", [("a", (3, 4), torch.float32)], tensors.__getitem__)


@pytest.mark.slow
def test_eight_b_shaped_conversion_memory_stays_near_one_tensor(tmp_path: Path) -> None:
    """One layer at the 8B's width and vocabulary: a 1 GiB embedding and head, 2.4 GiB in all."""
    out = tmp_path / "bench.json"
    script = REPO / "scripts" / "bench_convert.py"
    args = ["--layers", "1", "--work", str(tmp_path), "--out", str(out)]
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    result = json.loads(out.read_text())
    extra = result["convert_peak_rss"] - result["import_only_peak_rss"]
    assert extra < 2 * result["largest_tensor_bytes"] + 256 * 2**20, result
    assert result["convert_over_copy_time"] > 0
