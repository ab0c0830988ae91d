"""docker-compose.yml, statically (no Docker engine in the test run): its inline config
validates, it runs every process of the Procfile with the same command, and what it
publishes listens on every interface inside its container."""

from __future__ import annotations

import argparse
import shlex
import tomllib
from typing import Any
from urllib.parse import urlsplit

import yaml
from conftest import ROOT

from flexitasks.cli import build_parser
from flexitasks.config import Settings, parse_settings

SERVED = ("metrics", "dashboard")  # flexitasks commands that serve HTTP


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name.strip(): shlex.split(command) for name, command in (line.split(":", 1) for line in lines if line)}


def stack_settings() -> Settings:
    return parse_settings(tomllib.loads(compose()["configs"]["flexitasks-compose"]["content"]), "docker-compose")


def flexitasks_args(command: list[str]) -> argparse.Namespace:
    assert command[0] == "flexitasks", command
    return build_parser().parse_args(command[1:])


def test_the_stacks_providers_are_its_fake_services():
    services = compose()["services"]
    providers = stack_settings().providers
    assert providers
    for provider in providers:
        url = urlsplit(provider.base_url or "")
        fake = services[url.hostname or ""]["command"]
        assert fake[:2] == ["flexitasks", "fake-provider"]
        assert fake[fake.index("--port") + 1] == str(url.port)


def test_every_procfile_process_runs_in_the_stack_with_the_same_command():
    services = compose()["services"]
    for name, command in procfile().items():
        assert name in services, f"the Procfile's {name!r} is not a compose service"
        stacked = services[name]["command"]
        if command[0] == "celery":
            assert stacked[:4] == command[:4], name  # celery -A flexitasks <program>
            continue
        ours, theirs = flexitasks_args(command), flexitasks_args(stacked)
        assert (theirs.command, theirs.port) == (ours.command, ours.port), name


def test_the_exporter_and_dashboard_listen_on_every_interface_published_on_localhost():
    services = compose()["services"]
    for name in SERVED:
        args = flexitasks_args(services[name]["command"])
        assert args.command == name
        assert args.host == "0.0.0.0"  # the default 127.0.0.1 is unreachable from outside the container
        assert services[name]["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]


def test_the_exporter_and_dashboard_read_the_stacks_config_without_api_keys():
    stack = compose()
    services = stack["services"]
    for name in SERVED:
        service = services[name]
        mount = service["configs"][0]
        assert mount["source"] in stack["configs"]
        assert service["environment"] == {"FLEXITASKS_CONFIG": mount["target"]}
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    keys = {p.api_key_env for p in stack_settings().providers if p.api_key_env}
    assert keys and keys <= set(services["worker"]["environment"])
