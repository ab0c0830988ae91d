"""Breakers on a Redis Cluster: a real three-master cluster, a real worker whose breaker
state lives on it (the broker and results stay on the tests' Redis: kombu has no Cluster
transport).

What is shown: every key one Lua call touches shares a slot (no CROSSSLOT), the event
channel reaches every process although the providers' keys live on different nodes
(classic PUBLISH is broadcast over the cluster bus to every node), a trip reaches every
process, a failing provider opens fleet-wide and one probe closes it, and
``flexitasks status`` and the exporter read each provider's state from its own node.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import ROOT, SETTINGS, WORKDIR, start_worker, stop_worker, wait_for_worker
from redis_servers import REDIS_CLI, REDIS_SERVER, cluster

from flexitasks import chat_task
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.config import Settings
from flexitasks.fleet import fleet_status, reader_for
from flexitasks.harness import wait_until
from flexitasks.metrics.exporter import render
from flexitasks.redis_connect import sync_client

pytestmark = [
    pytest.mark.usefixtures("worker"),
    pytest.mark.skipif(not (REDIS_SERVER and REDIS_CLI), reason="needs redis-server and redis-cli"),
]

QUEUE = "cluster"
NODE = f"cluster@{socket.gethostname()}"
CONCURRENCY = 2
PROCESSES = CONCURRENCY + 1  # children and the main process hold a view
MESSAGES = [{"role": "user", "content": "Summarise this ticket"}]


@pytest.fixture(scope="module")
def on_cluster(worker) -> Iterator[Settings]:
    """The tests' settings with the breaker state on a fresh cluster, and a worker using them."""
    with cluster(3) as nodes:
        sync = SETTINGS.sync.model_copy(update={"redis_url": f"redis://127.0.0.1:{nodes[0].port}/0", "cluster": True})
        settings = SETTINGS.model_copy(update={"sync": sync})
        config = WORKDIR / "flexitasks-cluster.toml"
        config.write_text(settings.to_toml())
        proc = start_worker("-Q", QUEUE, name="cluster", concurrency=CONCURRENCY, config=config)
        try:
            wait_for_worker(NODE)
            yield settings
        finally:
            stop_worker(proc)


def store_of(settings: Settings) -> RedisBreakerStore:
    return RedisBreakerStore(sync_client(settings.sync), key_prefix=settings.sync.key_prefix,
                             channel=settings.sync.channel)


def send(n: int) -> list[dict[str, Any]]:
    pending = [chat_task.apply_async((MESSAGES,), {}, queue=QUEUE) for _ in range(n)]
    return [r.get(timeout=60) for r in pending]


def outcomes(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["provider"], a["outcome"]) for a in result["attempts"]]


def agrees(settings: Settings, state: str, provider: str = "primary") -> Callable[[], dict[str, Any] | None]:
    """Every process of the cluster worker shows ``provider`` in ``state`` at the authoritative generation."""

    def probe() -> dict[str, Any] | None:
        status = fleet_status(settings)
        auth = status["providers"][provider]
        views = [p for p in status["processes"] if p.get("node") == NODE]
        if auth["state"] != state or len(views) != PROCESSES:
            return None
        ok = all((v["breakers"][provider]["state"], v["breakers"][provider]["generation"])
                 == (state, auth["generation"]) for v in views)
        return status if ok else None

    return probe


@pytest.fixture()
def fresh(clean, on_cluster: Settings) -> Iterator[dict[str, Any]]:
    """Healthy fakes, every breaker on the cluster closed, every process agreeing."""
    store = store_of(on_cluster)
    for p in on_cluster.providers:
        store.force(p.name, on_cluster.breaker_policy(p), BreakerState.CLOSED)
    wait_until(agrees(on_cluster, "closed"), 15, what="closed on the cluster everywhere")
    yield clean


def test_a_trip_on_the_cluster_reaches_every_process_and_status_reads_every_node(fresh, on_cluster):
    store = store_of(on_cluster)
    policy = on_cluster.breaker_policy(on_cluster.provider("primary"))
    tripped = store.force("primary", policy, BreakerState.FORCED_OPEN).snapshot
    status = wait_until(agrees(on_cluster, "forced_open"), 15, what="the trip in every process")
    assert status["providers"]["primary"]["generation"] == tripped.generation

    answers = send(2 * CONCURRENCY)
    assert all(outcomes(a) == [("primary", "skipped"), ("secondary", "ok")] for a in answers)
    assert fresh["primary"].admin.stats()["requests"] == 0

    # Each provider's two keys share a slot; the CLI and the exporter read them from their nodes.
    client = sync_client(on_cluster.sync)
    for name in ("primary", "secondary"):
        assert client.keyslot(store.state_key(name)) == client.keyslot(store.window_key(name))
    env = {**os.environ, "FLEXITASKS_CONFIG": str(WORKDIR / "flexitasks-cluster.toml")}
    out = subprocess.run([sys.executable, "-m", "flexitasks.cli", "status", "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout)
    assert cli["providers"]["primary"]["state"] == "forced_open"
    assert cli["providers"]["secondary"]["state"] == "closed"
    assert sum(p.get("node") == NODE for p in cli["processes"]) == PROCESSES
    reader = reader_for(on_cluster)
    try:
        metrics = render(reader)
    finally:
        reader.client.close()
    assert 'flexitasks_breaker_state{provider="primary",state="forced_open"} 1.0' in metrics
    assert 'flexitasks_breaker_lagging_processes{provider="primary"} 0.0' in metrics


def test_failures_open_the_breaker_on_the_cluster_and_one_probe_closes_it(fresh, on_cluster):
    fresh["primary"].admin.set_fault(status=500)
    answers = send(4 * CONCURRENCY)
    assert all(a["provider"] == "secondary" for a in answers)
    opened = wait_until(agrees(on_cluster, "open"), 15, what="open in every process")["providers"]["primary"]

    probe_latency = 0.8
    fresh["primary"].admin.set_fault(latency=probe_latency, count=1)  # healthy, the probe slow
    since = fresh["primary"].admin.stats()["requests"]
    wait_until(lambda: fleet_status(on_cluster)["providers"]["primary"]["now"] >= opened["open_until"] + 0.05,
               15, what="the open interval to pass")
    answers = send(3 * CONCURRENCY)
    probes = [a for a in answers if outcomes(a) == [("primary", "ok")]]
    assert probes, [outcomes(a) for a in answers]
    log = fresh["primary"].admin.requests(since=since)
    assert log[0]["fault"] == "delay", log[0]  # the probe came first, and nothing reached the primary
    assert all(e["mono"] >= log[0]["mono"] + probe_latency - 0.1 for e in log[1:]), log  # before it answered
    closed = wait_until(agrees(on_cluster, "closed"), 15, what="closed everywhere")["providers"]["primary"]
    assert closed["generation"] == opened["generation"] + 2  # open -> half_open -> closed
    assert all(outcomes(a) == [("primary", "ok")] for a in send(CONCURRENCY))


def test_keys_of_one_call_share_a_slot_and_an_event_reaches_subscribers_on_every_node(on_cluster):
    client = sync_client(on_cluster.sync)
    store = store_of(on_cluster)
    slots = {name: client.keyslot(store.state_key(name)) for name in ("primary", "secondary", "third")}
    assert all(client.keyslot(store.window_key(name)) == slot for name, slot in slots.items())
    assert len(set(slots.values())) == 3  # one tag per provider: they spread over the cluster

    subscriptions = []
    for node in client.get_primaries():  # a process may be subscribed on any node
        pubsub = client.pubsub(node=node)
        pubsub.subscribe(on_cluster.sync.channel)
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"
        subscriptions.append(pubsub)
    policy = on_cluster.breaker_policy(on_cluster.provider("secondary"))
    store.force("third", policy, BreakerState.DISABLED)  # published by the node owning third's slot
    try:
        for pubsub in subscriptions:
            message = wait_until(lambda p=pubsub: p.get_message(timeout=0.5), 10, what="the event on every node")
            event = json.loads(message["data"])
            assert (event["provider"], event["state"]) == ("third", "disabled")
    finally:
        for pubsub in subscriptions:
            pubsub.close()
