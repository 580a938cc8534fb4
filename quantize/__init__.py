"""nld.quantize: ModelOpt PTQ recipes (fp8, int4-awq, nvfp4), calibration, quality report.

Not implemented yet: lands with the quantization issue.
"""
