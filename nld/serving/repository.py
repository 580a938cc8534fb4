"""Write a configured Triton model repository for a model: `<output>/nld/{config.pbtxt, 1/model.py}`.

The template lives in `triton_repo/` (installed as `nld.triton_repo`); its config's `${...}` fields are
filled from RepositorySettings, and its input list is rendered from the request-input table so the
two never disagree. The repository is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from nld.checkpoint import load_checkpoint
from nld.errors import NLDError
from nld.serving.inputs import INPUTS, REQUEST_MODES, REQUIRED
from nld.staging import staged_directory
from nld.tokenizer import TOKENIZER_FILE

MODEL_NAME = "nld"


# Streamed responses of one request go out at most this often (nld/serving/outbox.py says why); 0: no
# waiting, one response per engine step while the sender keeps up.
STREAM_INTERVAL_MS = 10
MAX_STREAM_INTERVAL_MS = 1000


def check_stream_interval(milliseconds: int) -> None:
    """The stream interval's bounds, named."""
    if not 0 <= milliseconds <= MAX_STREAM_INTERVAL_MS:
        raise NLDError(f"stream_interval_ms must be in [0, {MAX_STREAM_INTERVAL_MS}], got {milliseconds}")


COMPILE_SETTINGS = {"on": True, "off": False, "auto": None}  # config value -> load_backend's `compile`


def compile_setting(flag: bool | None) -> str:
    """--compile / --no-compile / neither as the repository's `compile` value."""
    return next(name for name, value in COMPILE_SETTINGS.items() if value is flag)


@dataclass(frozen=True)
class RepositorySettings:
    """What the served model runs with (written into config.pbtxt parameters)."""

    model_dir: str
    backend: str = "torch"
    build_dir: str = ""  # an nld-build output whose engines (tensorrt) or ONNX (onnxruntime) the backend runs
    dtype: str = "float32"
    device: str = "cpu"
    max_batch: int = 16
    kv_blocks: int = 4096
    kv_block_tokens: int = 16
    default_mode: str = "linear-spec"
    default_max_tokens: int = 128
    auto_threshold: int = 4
    compile: str = "auto"  # on | off | auto (the device's measured default): the torch backend's steps compiled
    stream_interval_ms: int = STREAM_INTERVAL_MS  # a request's streamed responses at most this often

    def check(self) -> None:
        from nld.backends import BACKENDS, BUILD_ARTIFACTS

        if self.backend not in BACKENDS:
            raise NLDError(f"--backend '{self.backend}' is not one of {', '.join(BACKENDS)}")
        if self.build_dir and self.backend not in BUILD_ARTIFACTS:
            raise NLDError(f"--build applies to the {' and '.join(BUILD_ARTIFACTS)} backends, not '{self.backend}'")
        if self.compile not in COMPILE_SETTINGS:
            raise NLDError(f"compile '{self.compile}' is not one of {', '.join(COMPILE_SETTINGS)}")
        if self.compile == "on" and self.backend != "torch":
            raise NLDError(f"--compile applies to the torch backend; the {self.backend} backend runs built graphs")
        if self.default_mode not in REQUEST_MODES:
            raise NLDError(f"default_mode '{self.default_mode}' is not one of {', '.join(REQUEST_MODES)}")
        for name in ("max_batch", "kv_blocks", "kv_block_tokens", "default_max_tokens", "auto_threshold"):
            if getattr(self, name) < 1:
                raise NLDError(f"{name} must be >= 1, got {getattr(self, name)}")
        check_stream_interval(self.stream_interval_ms)


def check_servable(settings: RepositorySettings, needs_tokenizer: bool = True) -> None:
    """What a server would only find out while loading the model: the build's artifacts for the
    backend and, where prompts are text only (`needs_tokenizer`), the tokenizer."""
    from nld.backends import BUILD_ARTIFACTS

    settings.check()
    if settings.build_dir:
        folder = Path(settings.build_dir) / BUILD_ARTIFACTS[settings.backend][1]
        if not folder.is_dir():
            raise NLDError(f"--build {settings.build_dir}: no {folder.name}/ for the {settings.backend} backend")
    if needs_tokenizer and not has_tokenizer(settings):
        raise NLDError(f"{settings.model_dir}: no {TOKENIZER_FILE}; the server takes text prompts")


def has_tokenizer(settings: RepositorySettings) -> bool:
    return (Path(settings.model_dir) / TOKENIZER_FILE).is_file()


def render_inputs() -> str:
    lines = []
    for name, spec in INPUTS.items():
        optional = "" if name in REQUIRED else " optional: true"
        lines.append(f'  {{ name: "{name}" data_type: {spec.triton_type} dims: [ {spec.dims} ]{optional} }}')
    return ",\n".join(lines)


def render_config(settings: RepositorySettings) -> str:
    template = (resources.files("nld.triton_repo") / MODEL_NAME / "config.pbtxt").read_text()
    fields = {key: str(value) for key, value in asdict(settings).items()}
    for key, value in fields.items():
        if '"' in value or "\\" in value:
            raise NLDError(f"{key} '{value}' cannot contain quotes or backslashes")
    return string.Template(template).substitute(fields, inputs=render_inputs())


def write_repository(output: str | Path, settings: RepositorySettings, staged_model: Path | None = None) -> Path:
    """Write the repository to `output` (replacing a previous one there); returns its path.
    `staged_model`: where the served checkpoint is now when `settings.model_dir` names it as it will be
    (a build's own checkpoint, still in the staging folder, under a path relative to the repository)."""
    settings.check()
    if staged_model is None:  # a user's repository: absolute paths
        settings = RepositorySettings(**{**asdict(settings), "model_dir": str(Path(settings.model_dir).resolve())})
    load_checkpoint(staged_model or settings.model_dir)  # fail now, with the checkpoint's own error
    output = Path(output).resolve()
    with staged_directory(output) as staging:
        version_dir = staging / MODEL_NAME / "1"
        version_dir.mkdir(parents=True)
        (staging / MODEL_NAME / "config.pbtxt").write_text(render_config(settings))
        model_py = resources.files("nld.triton_repo") / MODEL_NAME / "1" / "model.py"
        (version_dir / "model.py").write_text(model_py.read_text())
        (staging / "nld_repository.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")
    return output
