"""The Kubernetes manifests in workers/k8s/: valid against the bundled Kubernetes schemas
(``kubernetes-validate``, offline, strict), and consistent with flexitasks itself: the
ConfigMap's TOML validates, the grace period outlasts a task, every key the config names
is in the Secret, the Services select their Deployments, the commands parse."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT

K8S = ROOT / "workers" / "k8s"


def documents() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = kustomization["resources"]
    assert sorted(files) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return [doc for name in files for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_each_manifest_is_valid_against_the_kubernetes_schema(doc):
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_a_broken_manifest_is_caught():
    doc = dict(by_kind("Deployment")["flexitasks-worker"])
    doc["spec"] = {**doc["spec"], "replicas": "two"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def settings():
    from flexitasks.config import parse_settings

    toml = by_kind("ConfigMap")["flexitasks-config"]["data"]["flexitasks.toml"]
    return parse_settings(tomllib.loads(toml), "configmap flexitasks-config")


def container(name: str) -> dict[str, Any]:
    return by_kind("Deployment")[name]["spec"]["template"]["spec"]["containers"][0]


def test_the_worker_outlives_a_task_and_is_checked_by_inspect_ping():
    s = settings()
    pod = by_kind("Deployment")["flexitasks-worker"]["spec"]["template"]["spec"]
    task_time_limit = s.retry.request_timeout + 30  # celery_app: the hard limit of one run
    assert pod["terminationGracePeriodSeconds"] > task_time_limit
    probe = " ".join(container("flexitasks-worker")["livenessProbe"]["exec"]["command"])
    assert "celery -A flexitasks inspect ping" in probe


def test_keys_come_from_the_secret_and_config_from_the_configmap():
    s = settings()
    secret = by_kind("Secret")["flexitasks-keys"]
    named = {p.api_key_env for p in s.providers if p.api_key_env}
    assert named and named <= set(secret["stringData"])
    for name in ("flexitasks-worker", "flexitasks-exporter", "flexitasks-dashboard"):
        c = container(name)
        env = {e["name"]: e.get("value") for e in c["env"]}
        mount = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config")
        assert Path(env["FLEXITASKS_CONFIG"]).parent == Path(mount)
    assert container("flexitasks-worker")["envFrom"] == [{"secretRef": {"name": "flexitasks-keys"}}]


def test_exporter_and_dashboard_have_services_and_valid_commands():
    from flexitasks.cli import build_parser

    services = by_kind("Service")
    for name, command in (("flexitasks-exporter", "metrics"), ("flexitasks-dashboard", "dashboard")):
        deployment = by_kind("Deployment")[name]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        service = services[name]
        assert service["spec"]["selector"].items() <= labels.items()
        c = container(name)
        args = build_parser().parse_args(c["command"][1:])
        assert args.command == command
        assert service["spec"]["ports"][0]["targetPort"] == c["ports"][0]["name"]
        assert c["ports"][0]["containerPort"] == args.port
