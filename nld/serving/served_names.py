"""The model names one nld model is served under on OpenAI-style front ends, one per decoding mode:
`<name>` runs the server's default mode, `<name>:<mode>` a given one (`nld-tiny:ar`, `nld-tiny:auto`).
An unmodified OpenAI client picks the mode by picking the model."""

from __future__ import annotations

from pathlib import Path

from nld.serving.inputs import REQUEST_MODES

MODE_SEPARATOR = ":"
DEFAULT_ENDPOINT = "generate"


def served_names(name: str) -> dict[str, str | None]:
    """{served model name: its mode, or None for the server's default}, the default name first."""
    return {name: None, **{f"{name}{MODE_SEPARATOR}{mode}": mode for mode in REQUEST_MODES}}


def endpoint_name(mode: str | None) -> str:
    """The worker endpoint that serves `mode` (Dynamo endpoint names take no ':' or '-')."""
    return DEFAULT_ENDPOINT if mode is None else f"{DEFAULT_ENDPOINT}_{mode.replace('-', '_')}"


def default_served_name(model_dir: str | Path) -> str:
    """`nld-tiny` for the built-in model, the build folder's name for a build's checkpoint (OUT/model,
    OUT/quantized), else the checkpoint folder's name."""
    from nld.models import BUILTIN_MODEL

    path = Path(model_dir).resolve()
    if path == BUILTIN_MODEL.resolve():
        return "nld-tiny"
    return path.parent.name if (path.parent / "manifest.json").is_file() else path.name
