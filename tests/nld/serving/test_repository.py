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
