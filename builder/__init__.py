"""nld.builder: GPU SKU registry, build plans, TensorRT / TensorRT-RTX engine builds, manifests.

Not implemented yet: lands with the nld-build issue.
"""
