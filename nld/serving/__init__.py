"""Serving: Triton request parsing, the model repository, the tritonserver launcher and the gRPC client."""
