"""Write a safetensors file one tensor at a time, so a conversion never holds a whole file in memory.

The header (names, dtypes, shapes, offsets) is written first from shapes known in advance; then each
tensor is produced, written and dropped in header order. The result is a standard safetensors file.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from nld.checkpoint import FILE_DTYPES, QUANTIZED_FILE_DTYPES

SAFETENSORS_DTYPES = {dtype: name for name, dtype in (FILE_DTYPES | QUANTIZED_FILE_DTYPES).items()}


def write_streaming(
    path: Path,
    entries: Iterable[tuple[str, tuple[int, ...], torch.dtype]],
    produce: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write `entries` (name, shape, dtype) to `path`, calling `produce(name)` for each in turn.
    Returns the number of tensor bytes written."""
    entries = list(entries)
    header: dict[str, object] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, shape, dtype in entries:
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as stream:
        stream.write(struct.pack("<Q", len(encoded)))
        stream.write(encoded)
        for name, shape, dtype in entries:
            tensor = produce(name)
            if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
                raise ValueError(f"{name}: produced {tuple(tensor.shape)} {tensor.dtype}, declared {shape} {dtype}")
            stream.write(tensor.contiguous().view(torch.uint8).numpy().data)  # no extra copy
            del tensor
    return offset
