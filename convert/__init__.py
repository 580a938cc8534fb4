"""nld.convert: HF NLD checkpoint -> TRT-LLM checkpoint with TP shards (trtllm.py) and its independent
NumPy check (trtllm_check.py). The ONNX step network lands with the ONNX issue."""
