"""Export one step graph to ONNX in a child process, so a stop signal can end the export at once.

torch's ONNX exporter calls back into Python from C++. A stop signal that raises `Interrupted` inside
one of those callbacks cannot unwind through the C++ frames: the process aborts ("terminate called
after throwing an instance of 'python_error'"). So the export runs in a spawned child that ignores the
signals, while the parent waits in plain Python, where `Interrupted` is raised safely; the parent then
kills the child, and the staged folder it was writing into is removed as for any other stop.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
from multiprocessing.connection import Connection
from pathlib import Path

from nld.errors import NLDError

POLL_S = 0.1


class ExportError(NLDError):
    """The child's export failed; the message is its error."""


def _export(connection: Connection, model_dir: str, precision: str, path: str, adapter: bool) -> None:
    """The child: export the graph, send None or the error's text back."""
    for number in (signal.SIGINT, signal.SIGTERM):  # the parent decides when to stop, and kills this process
        signal.signal(number, signal.SIG_IGN)
    sys.stdout = sys.stderr  # ModelOpt and the exporter print; the parent's stdout is for its result
    try:
        import torch

        from nld.builder.quantize_stage import COMPUTE_PRECISION, is_quantized
        from nld.checkpoint import load_checkpoint
        from nld.model import NLDTransformer
        from nld.onnx_export import export_step_onnx
        from nld.onnx_qdq import export_quantized_step_onnx

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[COMPUTE_PRECISION[precision]]
        if is_quantized(precision):  # Q/DQ from the quantized checkpoint's own tensors
            export_quantized_step_onnx(Path(model_dir), Path(path), dtype, adapter=adapter)
        else:
            checkpoint = load_checkpoint(model_dir, with_adapter=True)
            export_step_onnx(NLDTransformer.from_checkpoint(checkpoint, dtype), Path(path), adapter=adapter)
        connection.send(None)
    except Exception as error:
        connection.send(f"{type(error).__name__}: {error}")


def export_graph(model_dir: Path, precision: str, path: Path, adapter: bool) -> Path:
    """Export the step graph of `model_dir` (`adapter`: with the draft adapter) in the build precision
    to `path`, in a child process; ExportError with the child's error when it fails."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_export, args=(sender, str(model_dir), precision, str(path), adapter), daemon=True)
    child.start()
    sender.close()
    try:
        while child.is_alive():
            child.join(POLL_S)  # a stop signal raises Interrupted here, in plain Python
    except BaseException:
        child.kill()
        child.join()
        raise
    problem = receiver.recv() if receiver.poll() else f"the export process exited with code {child.exitcode}"
    if problem is not None:
        raise ExportError(f"ONNX export of {path.name} failed: {problem}")
    return path
