"""The Triton model repository template (package data: nld/config.pbtxt, nld/1/model.py)."""
