"""`nld serve` refuses a port another process holds before starting anything (it used to print `ready:`
when another server answered on its gRPC port, then exit on "address already in use")."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from nld.errors import NLDError
from nld.models import default_model_dir
from nld.serving import server
from nld.serving.repository import RepositorySettings, write_repository


@pytest.mark.parametrize("taken", ["grpc_port", "http_port", "metrics_port"])
def test_a_taken_port_is_refused_naming_its_option(tmp_path: Path, taken: str) -> None:
    try:
        server.find_tritonserver()
    except NLDError as error:
        pytest.skip(str(error))
    repo = write_repository(tmp_path / "repo", RepositorySettings(str(default_model_dir())))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        ports = {name: server.free_port() for name in ("grpc_port", "http_port", "metrics_port")}
        ports[taken] = holder.getsockname()[1]
        triton = server.TritonServer(server.ServerSettings(repo, **ports))
        with pytest.raises(NLDError, match=f"--{taken.replace('_', '-')} {ports[taken]}: already in use"):
            triton.start()
    assert triton.process is None


def test_port_free_ignores_time_wait_but_not_listeners() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not server.port_free("127.0.0.1", port)
    assert server.port_free("127.0.0.1", port)
