"""Triton Python-backend entry point of the `nld` model; all logic lives in nld.serving.triton_model."""

from nld.serving.triton_model import TritonPythonModel

__all__ = ["TritonPythonModel"]
