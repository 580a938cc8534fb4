"""nld: compile and serve Nemotron-Labs-Diffusion models."""

__version__ = "0.1.0"
