"""nld.convert: HF NLD checkpoint -> TRT-LLM checkpoint, ONNX step network, TP shards.

Not implemented yet: the conversion stages land with the nld-build and ONNX issues.
"""
