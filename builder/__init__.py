"""nld.builder: GPU SKU registry and build plans (skus.py, plan.py, the nld-build CLI).

TensorRT / TensorRT-RTX engine builds and manifests land with the rest of the nld-build issue.
"""
