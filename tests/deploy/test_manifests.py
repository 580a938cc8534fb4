"""deploy/kubernetes: the manifest parses, and what it runs is what our command lines accept: every
worker argument parses with the worker's parser, every frontend flag is one `python -m dynamo.frontend`
knows and `nld serve-openai` uses, and the ports the containers, probes and Services name match them."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from nld.serving.dynamo_worker import argument_parser
from nld.serving.openai_server import OpenAIServer, OpenAISettings

yaml = pytest.importorskip("yaml")

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "nld-openai.yaml"


def documents() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc}


def container(name: str) -> dict:
    (only,) = documents()[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
    return only


def flag_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def port_named(spec: dict, name: str) -> int:
    return next(port["containerPort"] for port in spec["ports"] if port["name"] == name)


def test_every_service_selects_a_deployment_and_a_named_port() -> None:
    docs = documents()
    for (kind, name), doc in docs.items():
        if kind != "Service":
            continue
        selected = [
            d
            for (k, _), d in docs.items()
            if k == "Deployment" and d["spec"]["template"]["metadata"]["labels"] == doc["spec"]["selector"]
        ]
        assert len(selected) == 1, name
        (spec,) = selected[0]["spec"]["template"]["spec"]["containers"]
        for port in doc["spec"]["ports"]:
            assert port["targetPort"] in {p["name"] for p in spec["ports"]}, (name, port)


def test_worker_arguments_parse_with_the_worker_command_line() -> None:
    worker = container("nld-worker")
    assert worker["command"] == ["python", "-m", "nld.serving.dynamo_worker"]
    args = argument_parser().parse_args(worker["args"])
    assert args.status_port == port_named(worker, "status")
    assert args.discovery_backend == "etcd" and args.namespace == "nld"
    for probe in ("startupProbe", "livenessProbe"):
        assert worker[probe]["tcpSocket"]["port"] == "status"
    annotations = documents()[("Deployment", "nld-worker")]["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == args.status_port


def test_frontend_flags_are_dynamos_and_serve_openais() -> None:
    frontend = container("nld-frontend")
    assert frontend["command"] == ["python", "-m", "dynamo.frontend"]
    args = frontend["args"]
    assert int(flag_value(args, "--http-port")) == port_named(frontend, "http")
    assert frontend["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    ours = OpenAIServer(OpenAISettings(name="nld-8b")).frontend_command()
    for flag in (arg for arg in args if arg.startswith("--")):
        assert flag in ours, f"{flag}: not a flag nld serve-openai passes the frontend"
        if flag not in ("--discovery-backend", "--http-host", "--http-port"):  # the cluster's own
            assert flag_value(args, flag) == flag_value(ours, flag), flag
    if importlib.util.find_spec("dynamo") is not None:
        help_text = subprocess.run(
            [sys.executable, "-m", "dynamo.frontend", "--help"], capture_output=True, text=True, check=True
        ).stdout
        for flag in (arg for arg in args if arg.startswith("--")):
            assert flag in help_text, flag
