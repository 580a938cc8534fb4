"""The repository writer: a configured copy of triton_repo/, inputs rendered from the input table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nld.errors import CheckpointError, ConfigError, NLDError
from nld.models import default_model_dir
from nld.serving.inputs import INPUTS
from nld.serving.repository import RepositorySettings, write_repository


def test_writes_a_configured_repository(tmp_path: Path) -> None:
    settings = RepositorySettings(str(default_model_dir()), max_batch=3, default_mode="auto")
    repo = write_repository(tmp_path / "repo", settings)
    config = (repo / "nld" / "config.pbtxt").read_text()
    assert "decoupled: true" in config and 'backend: "python"' in config
    assert f'string_value: "{default_model_dir().resolve()}"' in config
    assert '{ key: "max_batch" value: { string_value: "3" } }' in config
    assert '{ key: "default_mode" value: { string_value: "auto" } }' in config
    for name, spec in INPUTS.items():
        assert f'name: "{name}" data_type: {spec.triton_type}' in config
    assert "${" not in config
    assert "TritonPythonModel" in (repo / "nld" / "1" / "model.py").read_text()
    assert json.loads((repo / "nld_repository.json").read_text())["max_batch"] == 3
    # Rewriting replaces the old repository and leaves no staging folder behind.
    write_repository(tmp_path / "repo", settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_bad_settings_fail_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(NLDError, match="default_mode 'beam'"):
        write_repository(tmp_path / "repo", RepositorySettings(str(default_model_dir()), default_mode="beam"))
    with pytest.raises(NLDError, match="kv_blocks must be >= 1"):
        write_repository(tmp_path / "repo", RepositorySettings(str(default_model_dir()), kv_blocks=0))
    with pytest.raises((ConfigError, CheckpointError)):
        write_repository(tmp_path / "repo", RepositorySettings(str(tmp_path)))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--backend", "bogus"], "--backend 'bogus' is not one of torch, onnxruntime, tensorrt"),
        (["--build", "{tmp}"], "no manifest.json; is it an nld-build output?"),
        (["--stream-interval-ms", "5000"], "stream_interval_ms must be in [0, 1000], got 5000"),
    ],
)
def test_nld_repo_refuses_what_the_server_would_fail_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    """Refused by `nld repo` at once (and by `nld serve-openai` before it starts anything), not in a
    Triton log 28 s later."""
    from nld.cli import main
    from tests.conftest import fixture_dir

    filled = [o.format(tmp=tmp_path, fixture=fixture_dir("tiny_b8")) if "{" in o else o for o in options]
    assert main(["repo", *filled, "--output", str(tmp_path / "repo")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()
    assert main(["serve-openai", *filled, "--http-port", "1"]) == 2
    assert message in capsys.readouterr().err


def test_a_model_without_tokenizer_is_served_with_token_ids_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """nld repo writes it and says so; nld serve-openai (Dynamo tokenizes) refuses it."""
    from nld.cli import main
    from tests.conftest import fixture_dir

    model = str(fixture_dir("tiny_b8"))
    assert main(["repo", "--model", model, "--output", str(tmp_path / "repo")]) == 0
    assert "no tokenizer.json: the server takes input_ids prompts only" in capsys.readouterr().err
    assert main(["serve-openai", "--model", model, "--http-port", "1"]) == 2
    assert "no tokenizer.json; the server takes text prompts" in capsys.readouterr().err


def test_check_servable_names_build_problems(tmp_path: Path) -> None:
    from nld.serving.repository import check_servable

    model = str(default_model_dir())
    with pytest.raises(NLDError, match="--build applies to the onnxruntime and tensorrt backends, not 'torch'"):
        check_servable(RepositorySettings(model, "torch", str(tmp_path)))
    with pytest.raises(NLDError, match="no onnx/ for the onnxruntime backend"):
        check_servable(RepositorySettings(model, "onnxruntime", str(tmp_path)))


def test_served_names_default_to_the_build_folder(tmp_path: Path) -> None:
    from nld.serving.served_names import default_served_name

    build = tmp_path / "nld-8b-gb200"
    (build / "model").mkdir(parents=True)
    (build / "manifest.json").write_text("{}")
    assert default_served_name(build / "model") == "nld-8b-gb200"
    assert default_served_name(tmp_path / "my-checkpoint") == "my-checkpoint"
    assert default_served_name(default_model_dir()) == "nld-tiny"
