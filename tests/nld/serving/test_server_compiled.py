"""`nld repo --compile`: the real tritonserver runs the engine on compiled steps, compiled at model load
(inside Triton's embedded Python, whose ASCII locale once failed torch.compile's template reads), and
every mode streams what the eager in-process engine generates."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import MODES, GenerationParams
from nld.serving.client import NLDClient
from nld.serving.repository import RepositorySettings, write_repository
from nld.serving.server import ServerSettings, TritonServer, free_port
from nld.tokenizer import NLDTokenizer

pytestmark = [pytest.mark.server, pytest.mark.slow]

PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def compiled_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    settings = RepositorySettings(str(default_model_dir()), max_batch=2, compile="on")
    repo = write_repository(tmp_path_factory.mktemp("compiled") / "repo", settings)
    server = ServerSettings(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(server) as running:
        yield running


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_streams_what_the_eager_engine_generates(compiled_server: TritonServer, mode: str) -> None:
    tokenizer = NLDTokenizer.from_dir(default_model_dir())
    assert tokenizer is not None
    params = GenerationParams(max_new_tokens=32)
    expected = generate(load_backend(str(default_model_dir())), tokenizer.encode_prompt(PROMPT), mode, params)
    with NLDClient(compiled_server.settings.grpc_url) as client:
        result = client.generate(PROMPT, mode=mode, max_tokens=32)
    assert result.output_ids == expected.new_ids
    assert "compiled the engine's step shapes" in compiled_server.log_tail(400)
