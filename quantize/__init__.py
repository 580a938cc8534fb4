"""nld.quantize: ModelOpt PTQ recipes (fp8, int4-awq, nvfp4), two-mode calibration, fake-quant PTQ and the
per-mode quality report. Exported quantized checkpoints land next (docs/quantization.md)."""
