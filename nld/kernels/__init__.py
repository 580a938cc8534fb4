"""Decode-step kernels: CPU references (`reference`), the `nld::` torch custom ops (`ops`), and the CUDA
implementations in `plugins/` that the ops dispatch to once the extension is loaded."""
