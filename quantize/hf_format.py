"""The unified Hugging Face quantized checkpoint, as ModelOpt writes it for TensorRT-LLM, and its inverse.

Per quantized linear layer `<name>` (tensor names and packing follow ModelOpt 0.47's unified export):
- fp8: `<name>.weight` float8_e4m3fn, `<name>.weight_scale` (fp32 scalar, amax / 448),
  `<name>.input_scale` (fp32 scalar);
- int4-awq (W4A16): `<name>.weight` uint8 [out/2, in], two signed 4-bit values per byte (output channels
  2j and 2j+1 in the low and high nibble), `<name>.weight_scale` [out, in/128] (amax / 7), and
  `<name>.pre_quant_scale` [in], the AWQ input scale (the layer computes (x * pre_quant_scale) @ W^T);
- nvfp4 (written on a CUDA host; not loadable here): `<name>.weight` uint8 [out, in/2] (two FP4 E2M1
  values per byte), `<name>.weight_scale` float8_e4m3fn [out, in/16], `<name>.weight_scale_2` and
  `<name>.input_scale` (fp32 scalars);
- with an FP8 KV cache: `<attn>.k_proj.k_scale` / `<attn>.v_proj.v_scale` (fp32 scalars).
Everything else (norms, embeddings, the diffusion head) stays in the 16-bit export dtype.
`hf_quant_config.json` names the algorithm; `config.json` carries it as `quantization_config`.

`dequantize` turns such a file back into plain float weights (W = unpack(q) * scale, with the AWQ input
scale folded into W's columns), which is how the torch backend runs a quantized checkpoint on the CPU.
"""

from __future__ import annotations

import torch

from nld.checkpoint import QUANT_CONFIG_FILE as HF_QUANT_CONFIG
from nld.errors import CheckpointError

SCALE_SUFFIXES = ("weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale", "k_scale", "v_scale")


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [out/2, in] -> int8 [out, in] in [-8, 7] (the inverse of ModelOpt's pack_int4_in_uint8)."""
    low = (packed & 0x0F).to(torch.int8)
    high = (packed >> 4).to(torch.int8)
    low = torch.where(low > 7, low - 16, low)
    high = torch.where(high > 7, high - 16, high)
    out_half, in_features = packed.shape
    return torch.stack((low, high), dim=1).reshape(2 * out_half, in_features)


def pack_int4(values: torch.Tensor) -> torch.Tensor:
    """int [out, in] in [-8, 7] -> uint8 [out/2, in]: `unpack_int4`'s inverse (ModelOpt's packing)."""
    nibbles = values.to(torch.uint8) & 0x0F
    return nibbles[0::2] | (nibbles[1::2] << 4)


def _dequantize_fp8(tensors: dict[str, torch.Tensor], name: str, group_size: int | None) -> torch.Tensor:
    return tensors[f"{name}.weight"].float() * tensors[f"{name}.weight_scale"].float()


def _dequantize_int4_awq(tensors: dict[str, torch.Tensor], name: str, group_size: int | None) -> torch.Tensor:
    if group_size is None:
        raise CheckpointError(f"{HF_QUANT_CONFIG}: W4A16_AWQ needs a group_size")
    values = unpack_int4(tensors[f"{name}.weight"]).float()
    scale = tensors[f"{name}.weight_scale"].float().repeat_interleave(group_size, dim=1)
    weight = values * scale
    pre_quant = tensors.get(f"{name}.pre_quant_scale")
    return weight * pre_quant.float()[None, :] if pre_quant is not None else weight


DEQUANTIZERS = {"FP8": _dequantize_fp8, "W4A16_AWQ": _dequantize_int4_awq}


def dequantize(tensors: dict[str, torch.Tensor], quantization: dict, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Plain `dtype` weights from a unified quantized state dict (scales dropped once applied)."""
    algorithm = quantization.get("quant_algo")
    if algorithm not in DEQUANTIZERS:
        raise CheckpointError(
            f"{HF_QUANT_CONFIG}: quant_algo '{algorithm}' cannot be loaded here (loadable: {', '.join(DEQUANTIZERS)})"
        )
    group_size = quantization.get("group_size")
    result = {}
    for name, tensor in tensors.items():
        if name.endswith(SCALE_SUFFIXES):
            continue
        layer = name.removesuffix(".weight")
        if name.endswith(".weight") and f"{layer}.weight_scale" in tensors:
            result[name] = DEQUANTIZERS[algorithm](tensors, layer, group_size).to(dtype)
        else:
            result[name] = tensor.to(dtype)
    return result
