"""The asyncio producers (``achat``, ``astream_chat``) on the topologies the workers support.

Real ``redis-server`` processes on free ports (``redis_servers.py``), a real ``celery worker``
per deployment, the session's fake providers, and the producer in a process of its own
(``aio_producer.py``: the default app reads its settings once). Shown: with broker, results
and ``[sync]`` all named by ``sentinel://`` URLs, ``achat`` waits on the master's pub/sub and
``astream_chat`` reads the master's streams; with ``[sync]`` on a Redis Cluster (results stay
on a single Redis: Celery has no Cluster result backend) the worker writes each stream on
the node of its slot and ``astream_chat`` reads it there. A malformed URL or a missing
``master_name`` is a ``ConfigError`` naming the setting, raised before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import KEY_PREFIX, ROOT, SETTINGS, WORKDIR, start_worker, stop_worker
from redis_servers import REDIS_CLI, REDIS_SERVER, SentinelGroup, cluster, sentinel_group

from flexitasks.celery_app import FlexitasksApp
from flexitasks.config import Settings
from flexitasks.errors import ConfigError
from flexitasks.harness import wait_until
from flexitasks.redis_connect import sync_client
from flexitasks.streaming import aio

pytestmark = pytest.mark.skipif(not (REDIS_SERVER and REDIS_CLI), reason="needs redis-server and redis-cli")

PRODUCER = Path(__file__).with_name("aio_producer.py")
STREAMS = 12  # on three masters: a stream per node at least, but for a chance of 3 ** -11


def with_changes(celery: dict[str, Any] | None = None, sync: dict[str, Any] | None = None) -> Settings:
    data = SETTINGS.model_dump()
    data["celery"].update(celery or {})
    data["sync"].update(sync or {})
    return Settings.model_validate(data)


def run_producer(settings: Settings, name: str, *args: str) -> dict[str, Any]:
    """``aio_producer.py`` with ``settings`` as its config file; its JSON report."""
    config = WORKDIR / f"flexitasks-{name}.toml"
    config.write_text(settings.to_toml())
    env = {**os.environ, "FLEXITASKS_CONFIG": str(config)}
    out = subprocess.run([sys.executable, str(PRODUCER), *args], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=150)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@contextlib.contextmanager
def deployed(settings: Settings, name: str) -> Iterator[None]:
    """A worker of ``settings``, answering ping on its own broker."""
    config = WORKDIR / f"flexitasks-{name}-worker.toml"
    config.write_text(settings.to_toml())
    proc = start_worker(name=name, concurrency=2, config=config)
    control = FlexitasksApp(settings, main=f"{name}-control")
    node = f"{name}@{socket.gethostname()}"
    try:
        wait_until(lambda: any(node in r for reply in control.control.ping(timeout=0.5) or [] for r in reply),
                   90, interval=0, what=f"worker {node} (logs in {WORKDIR})")
        yield
    finally:
        stop_worker(proc)
        control.close()


def answered_in_full(streams: list[list[dict[str, Any]]]) -> None:
    for n, events in enumerate(streams):
        assert [e["type"] for e in events][-1] == "done", events
        result = events[-1]["result"]
        assert result["provider"] == "primary"
        assert result["content"].startswith(f"primary: question {n}")
        assert "".join(e["text"] for e in events if e["type"] == "delta") == result["content"]


def answers_its_own_question(report: dict[str, Any]) -> None:
    assert report["achat"]["content"].startswith("primary: Tell me about streams")
    assert report["task_error"] == "InvalidRequest"  # rebuilt from the backend, as get() raises it
    assert [a["content"].split(": ", 1)[1][:2] for a in report["many"]] == [f"q{i}" for i in range(10)]


@pytest.fixture(scope="module")
def on_sentinel(fakes) -> Iterator[tuple[SentinelGroup, Settings]]:
    """Broker, results and breakers/streams all named by the sentinels only, a worker using them."""
    with sentinel_group() as group:
        named = {"master_name": group.master_name}
        settings = with_changes({"broker_url": group.url, "result_backend": group.url, **named},
                                {"redis_url": group.url, **named})
        with deployed(settings, "aio-sentinel"):
            yield group, settings


def test_achat_and_astream_chat_with_results_and_streams_behind_sentinel(on_sentinel, fakes):
    group, settings = on_sentinel
    for fp in fakes.values():
        fp.admin.reset()
    report = run_producer(settings, "aio-sentinel", "3")
    assert "raised" not in report, report
    answers_its_own_question(report)
    answered_in_full(report["streams"])
    # The master's Redis is the one that holds them (the replica is read-only).
    master = group.master.client()
    assert master.info("replication")["role"] == "master"
    assert any(master.scan_iter(match=f"{KEY_PREFIX}:stream:*"))
    assert any(master.scan_iter(match="celery-task-meta-*"))


@pytest.fixture(scope="module")
def on_cluster(redis_client, fakes) -> Iterator[Settings]:
    """``[sync]`` (breakers, streams) on a fresh three-master Cluster; broker and results on the
    tests' Redis, a queue of this module's own."""
    with cluster(3) as nodes:
        settings = with_changes({"queue": f"aio-cluster-{KEY_PREFIX}"},
                                {"redis_url": f"redis://127.0.0.1:{nodes[0].port}/0", "cluster": True})
        with deployed(settings, "aio-cluster"):
            yield settings


def test_astream_chat_reads_each_stream_from_its_node_of_a_cluster(on_cluster, fakes):
    for fp in fakes.values():
        fp.admin.reset()
    report = run_producer(on_cluster, "aio-cluster", str(STREAMS))
    assert "raised" not in report, report
    answers_its_own_question(report)
    answered_in_full(report["streams"])

    # Each stream is one key with no hash tag: the worker wrote it on the node of its own slot.
    client = sync_client(on_cluster.sync)
    nodes = set()
    for node in client.get_primaries():
        held = list(node.redis_connection.scan_iter(match=f"{KEY_PREFIX}:stream:*"))
        assert all(client.get_node_from_key(k) == node for k in held)
        nodes |= {node.name} if held else set()
    assert len(nodes) >= 2, "every stream on one node: the keys would share a hash tag"


def test_achat_without_a_master_name_for_a_sentinel_backend_is_a_config_error_before_sending(fakes):
    settings = with_changes({"result_backend": "sentinel://127.0.0.1:1/0;sentinel://127.0.0.1:2/0",
                             "queue": f"aio-never-{KEY_PREFIX}"})
    report = run_producer(settings, "aio-no-master")
    assert report["raised"] == "ConfigError", report
    assert report["message"] == "celery.result_backend is a sentinel:// URL: celery.master_name is required"
    assert not report["chained"]  # no redis-py traceback behind it


@pytest.mark.parametrize(("celery", "sync", "message"), [
    ({"result_backend": "sentinel://127.0.0.1:26379/zero", "master_name": "m"}, {},
     "celery.result_backend: database 'zero' is not a number"),
    ({"result_backend": "redis://127.0.0.1:port/0"}, {}, "celery.result_backend: Port could not be cast"),
    ({"result_backend": "sentinel://127.0.0.1:26379/0;redis://127.0.0.1:6379/0", "master_name": "m"}, {},
     "celery.result_backend: every part of a sentinel URL starts with sentinel://, not 'redis'"),
    ({}, {"redis_url": "sentinel://:secret@/0", "master_name": "m"},
     "sync.redis_url: a sentinel URL part has no host"),
    ({}, {"redis_url": "redis://127.0.0.1:7000/3", "cluster": True},
     "sync.redis_url: Argument 'db' must be 0"),
    ({"result_backend": "rpc://"}, {}, "achat/astream_chat need a Redis result backend, not 'rpc'"),
])
def test_a_malformed_url_is_a_config_error_naming_the_setting(celery, sync, message):
    """The clients ``achat`` builds first (``_new_clients``), from an app of these settings."""
    producer = FlexitasksApp(with_changes(celery, sync), main="aio-malformed")

    async def build() -> None:
        aio._new_clients(producer)

    with pytest.raises(ConfigError) as raised:
        asyncio.run(build())
    assert str(raised.value).startswith(message)  # (the last words of some are redis-py's or urllib's)
    error = raised.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)  # no redis-py trace
    assert "secret" not in str(raised.value)
