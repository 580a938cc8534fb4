"""Against the real tritonserver: a long stream interval joins a request's streamed tokens into few
responses, with the same output; one client's stream carries request after request, and a request given
up on closes it without hurting the next."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nld.generate import generate, load_backend
from nld.models import default_model_dir
from nld.modes import GenerationParams
from nld.serving.client import NLDClient
from nld.serving.repository import RepositorySettings, write_repository
from nld.serving.server import ServerSettings, TritonServer, free_port
from nld.tokenizer import NLDTokenizer
from tests.nld.helpers import wait_for_idle_pool

pytestmark = pytest.mark.server

PROMPT = "def fibonacci(n):"


@pytest.fixture(scope="module")
def slow_stream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerSettings]:
    settings = RepositorySettings(str(default_model_dir()), max_batch=4, kv_blocks=256, stream_interval_ms=1000)
    repo = write_repository(tmp_path_factory.mktemp("interval") / "repo", settings)
    server = ServerSettings(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(server):
        yield server


def test_tokens_within_the_interval_share_a_response(slow_stream: ServerSettings) -> None:
    model = default_model_dir()
    tokenizer = NLDTokenizer.from_dir(model)
    assert tokenizer is not None
    expected = generate(load_backend(str(model)), tokenizer.encode_prompt(PROMPT), "ar", GenerationParams(40)).new_ids
    with NLDClient(slow_stream.grpc_url) as client:
        for _ in range(2):  # the second request rides the stream the first opened
            result = client.generate(PROMPT, mode="ar", max_tokens=40)
            assert result.output_ids == expected and result.finish_reason == "length"
            # the first token at once; the other 39 within the interval, with the last response
            assert len(result.pieces) <= 3 and len(result.pieces[0]) > 0
            assert "".join(result.pieces) == tokenizer.decode(expected)


def test_a_request_given_up_on_does_not_hurt_the_next_on_the_same_client(slow_stream: ServerSettings) -> None:
    with NLDClient(slow_stream.grpc_url) as client:
        cancelled = client.generate(PROMPT, mode="ar", max_tokens=400, cancel_after=1)
        assert cancelled.finish_reason == "cancelled"
        again = client.generate(PROMPT, mode="linear-spec", max_tokens=12)
        assert len(again.output_ids) == 12 and again.finish_reason == "length"
    assert wait_for_idle_pool(slow_stream.metrics_url)["nld_kv_blocks_in_use"] == 0
