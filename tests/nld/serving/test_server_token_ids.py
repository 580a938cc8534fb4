"""Token-id prompts over Triton (`input_ids`, as TensorRT-LLM's backend takes them): used as given, on
the built-in model and on a checkpoint without a tokenizer, which the server can now serve; and chat
prompts (`messages`), rendered as `nld generate --messages` renders them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nld.errors import NLDError
from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import GenerationParams
from nld.serving.client import NLDClient
from nld.serving.repository import RepositorySettings, write_repository
from nld.serving.server import ServerSettings, TritonServer, free_port
from tests.conftest import fixture_dir

pytestmark = pytest.mark.server

IDS = [1, 482, 796, 11, 68, 15]


@pytest.fixture(scope="module")
def tokenizerless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerSettings]:
    """The tiny_b8 fixture checkpoint (no tokenizer.json) behind the real tritonserver."""
    repo = write_repository(tmp_path_factory.mktemp("ids") / "repo", RepositorySettings(str(fixture_dir("tiny_b8"))))
    settings = ServerSettings(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(settings):
        yield settings


@pytest.mark.parametrize("mode", ["ar", "linear-spec", "diffusion"])
def test_token_ids_on_the_builtin_model_equal_in_process(tiny_server: ServerSettings, mode: str) -> None:
    expected = generate(load_backend(str(default_model_dir())), IDS, mode, GenerationParams(max_new_tokens=16))
    with NLDClient(tiny_server.grpc_url) as client:
        result = client.generate(None, input_ids=IDS, mode=mode, max_tokens=16)
    assert result.output_ids == expected.new_ids and result.text  # the tokenizer still detokenizes


def test_a_model_without_tokenizer_serves_token_ids(tokenizerless: ServerSettings) -> None:
    model = fixture_dir("tiny_b8")
    ids = [1, 5, 9, 13]
    expected = generate(load_backend(str(model)), ids, "linear-spec", GenerationParams(max_new_tokens=12))
    with NLDClient(tokenizerless.grpc_url) as client:
        result = client.generate(None, input_ids=ids, mode="linear-spec", max_tokens=12)
        assert result.output_ids == expected.new_ids and result.text == ""
        with pytest.raises(NLDError, match=r"input 'text_input': this model has no tokenizer\.json"):
            client.generate("def f():", max_tokens=4)
        with pytest.raises(NLDError, match="input 'input_ids': prompt token ids must lie in"):
            client.generate(None, input_ids=[10**6], max_tokens=4)
        with pytest.raises(NLDError, match="input 'stop_words': this model has no tokenizer"):
            client.generate(None, input_ids=ids, max_tokens=4, stop_words=["x"])


def test_client_command_takes_prompt_ids(tokenizerless: ServerSettings, capsys: pytest.CaptureFixture[str]) -> None:
    from nld.cli import main

    assert (
        main(["client", "--url", tokenizerless.grpc_url, "--prompt-ids", "1,5,9", "--max-tokens", "4", "--json"]) == 0
    )
    assert '"output_ids": [' in capsys.readouterr().out


def test_messages_render_as_nld_generate_renders_them(tiny_server: ServerSettings, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json

    from nld.cli import main
    from nld.tokenizer import NLDTokenizer

    chat = [{"role": "system", "content": "# utilities"}, {"role": "user", "content": "def add(a, b):"}]
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    expected = generate(
        load_backend(str(default_model_dir())), tokenizer.encode_messages(chat), "ar", GenerationParams(16)
    )
    with NLDClient(tiny_server.grpc_url) as client:
        result = client.generate(None, messages=json.dumps(chat), mode="ar", max_tokens=16)
        assert result.output_ids == expected.new_ids
        with pytest.raises(NLDError, match="input 'messages': message 0 must be an object"):
            client.generate(None, messages='[{"content": "x"}]', max_tokens=4)
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(chat))
    capsys.readouterr()
    assert main(["generate", "--messages", str(path), "--mode", "ar", "--max-new-tokens", "16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["new_ids"] == expected.new_ids
