"""The checkpoint tokenizer (with chat template) and the `nld generate` command line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from nld.cli import main
from nld.generate import generate
from nld.modes import MODES, GenerationParams
from nld.tokenizer import NLDTokenizer
from tests.conftest import fixture_dir
from tests.nld.helpers import backend_for

TEMPLATE = (
    "{% for m in messages %}<s>[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


@pytest.fixture(scope="module")
def model_with_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tmp_path_factory.mktemp("tok") / "tiny_b8_tok"
    shutil.copytree(fixture_dir("tiny_b8"), model, ignore=shutil.ignore_patterns("expected"))
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    text = ["def add(a, b):\n    return a + b\n", "the quick brown fox jumps over the lazy dog"] * 50
    tokenizer.train_from_iterator(text, trainer)
    tokenizer.save(str(model / "tokenizer.json"))
    (model / "tokenizer_config.json").write_text(json.dumps({"chat_template": TEMPLATE, "bos_token": "<s>"}))
    return model


def test_chat_template_and_round_trip(model_with_tokenizer: Path) -> None:
    tokenizer = NLDTokenizer.from_dir(model_with_tokenizer)
    assert tokenizer is not None
    assert tokenizer.apply_chat_template("hi") == "<s>[user] hi\n[assistant]"
    ids = tokenizer.encode_prompt("def add(a, b):")
    assert ids[0] == tokenizer.tokenizer.token_to_id("<s>")
    assert tokenizer.decode(tokenizer.encode_prompt("the lazy dog", chat=False)) == "the lazy dog"


def test_generate_with_text_prompt(model_with_tokenizer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "generate",
            "--model",
            str(model_with_tokenizer),
            "--mode",
            "ar",
            "--prompt",
            "the quick",
            "--max-new-tokens",
            "6",
            "--json",
        ]
    )
    record = json.loads(capsys.readouterr().out)
    assert code == 0 and len(record["new_ids"]) == 6 and isinstance(record["text"], str)


@pytest.mark.parametrize("mode", list(MODES))
def test_cli_json_matches_library(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = fixture_dir("tiny_b8_spec_lora")
    prompt = [448, 419, 396, 482, 80]
    args = [
        "generate",
        "--model",
        str(model),
        "--mode",
        mode,
        "--prompt-ids",
        ",".join(map(str, prompt)),
        "--max-new-tokens",
        "20",
        "--block-length",
        "8",
        "--json",
    ]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    expected = generate(backend_for("tiny_b8_spec_lora"), prompt, mode, GenerationParams(20, 8))
    assert record["new_ids"] == expected.new_ids
    assert record["nfe"] == expected.nfe
    assert record["tokens_per_forward"] == pytest.approx(expected.tokens_per_forward, abs=1e-4)
    assert {"seconds", "finish_reason", "mean_acceptance_length"} <= record.keys()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", "hello"], "no tokenizer.json"),
        (["--prompt-ids", "1,2", "--device", "cuda:7"], "no CUDA device"),
        (["--prompt-ids", "1,2", "--dtype", "int8"], "unknown dtype 'int8'"),
        (["--prompt-ids", "1,2", "--max-new-tokens", "0"], "max_new_tokens: must lie in [1, 2147483647], got 0"),
    ],
)
def test_cli_errors_are_one_line(extra: list[str], message: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nld.cli", "generate", "--model", str(fixture_dir("tiny_b8")), *extra],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr


def test_generate_reports_tokens_as_they_become_final() -> None:
    """generate(on_tokens=...) hears the output in order, once per step that made tokens final."""
    from nld.generate import load_backend
    from nld.models import default_model_dir

    backend = load_backend(str(default_model_dir()))
    for mode in MODES:
        heard: list[list[int]] = []
        params = GenerationParams(max_new_tokens=24)
        result = generate(backend, [1, 482, 796, 11], mode, params, lambda ids, text, heard=heard: heard.append(ids))
        assert [token for ids in heard for token in ids] == result.new_ids, mode
        assert len(heard) > 2 and all(heard), mode  # streamed, not reported once at the end


def test_generate_prints_the_streamed_text(capsys: pytest.CaptureFixture[str]) -> None:
    for mode in MODES:
        command = ["generate", "--mode", mode, "--prompt", "def add(a, b):", "--max-new-tokens", "24"]
        assert main(command) == 0
        streamed = capsys.readouterr().out
        assert main([*command, "--json"]) == 0
        assert streamed == json.loads(capsys.readouterr().out)["text"] + "\n", mode
