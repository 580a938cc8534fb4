"""A build is self-contained: moved elsewhere with its source checkpoint deleted, it still verifies,
generates (`nld generate --build`) and serves (its Triton repository), with paths relative to itself."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from nld.builder.cli import main as build_main
from nld.cli import main as nld_main
from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import GenerationParams
from nld.tokenizer import NLDTokenizer

PROMPT = "def add(a, b):"


@pytest.fixture(scope="module")
def moved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict]]:
    """A cpu-target build of a copy of the built-in model, moved to another folder, the copy deleted;
    with the output in-process generation gave from the copy before it went."""
    root = tmp_path_factory.mktemp("relocate")
    source = root / "checkpoint"
    shutil.copytree(default_model_dir(), source)
    chat = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    (source / "chat_template.jinja").write_text(chat)
    assert (
        build_main(["--model", str(source), "--target", "cpu", "--precision", "bf16", "--output", str(root / "out")])
        == 0
    )
    tokenizer = NLDTokenizer.from_dir(source)
    assert tokenizer is not None
    ids = tokenizer.encode_prompt(PROMPT, chat=False)
    expected = {"ids": ids, "new_ids": generate(load_backend(str(source)), ids, "ar", GenerationParams(16)).new_ids}
    target = root / "elsewhere" / "deployed"
    target.parent.mkdir()
    shutil.move(str(root / "out"), target)
    shutil.rmtree(source)
    yield target, expected


def test_nothing_in_the_build_points_outside_it(moved: tuple[Path, dict]) -> None:
    out, _ = moved
    for path in out.rglob("*"):
        if path.suffix in (".json", ".pbtxt") and path.name != "manifest.json":  # the manifest records the source
            assert "relocate" not in path.read_text(), path
    assert {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= {path.name for path in (out / "model").iterdir()}
    assert (out / "model" / "linear_spec_lora").is_dir()


def test_verify_passes_then_names_a_changed_and_a_missing_file(
    moved: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = moved
    assert build_main(["--verify", str(out)]) == 0
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / "model" / "tokenizer.json", "a") as changed:
        changed.write(" ")
    (copy / "triton_repo" / "nld" / "config.pbtxt").unlink()
    capsys.readouterr()
    assert build_main(["--verify", str(copy)]) == 1
    report = capsys.readouterr().out.splitlines()
    assert report == ["missing: triton_repo/nld/config.pbtxt", "changed: model/tokenizer.json"]


def test_generate_from_the_moved_build(moved: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    out, expected = moved
    command = ["generate", "--build", str(out), "--prompt", PROMPT, "--no-chat-template", "--mode", "ar"]
    assert nld_main([*command, "--max-new-tokens", "16", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prompt_ids"] == expected["ids"] and record["new_ids"] == expected["new_ids"]


@pytest.mark.server
def test_serve_the_moved_build(moved: tuple[Path, dict]) -> None:
    from nld.serving.client import NLDClient
    from nld.serving.server import ServerSettings, TritonServer, free_port

    out, expected = moved
    settings = ServerSettings(
        out / "triton_repo", grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()
    )
    with TritonServer(settings), NLDClient(settings.grpc_url) as client:
        result = client.generate(None, input_ids=expected["ids"], mode="ar", max_tokens=16)
    assert result.output_ids == expected["new_ids"]
