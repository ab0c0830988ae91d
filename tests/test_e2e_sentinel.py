"""Redis Sentinel: broker, results and breakers on a master + replica watched by three
sentinels, the master killed mid-traffic.

Real ``redis-server`` processes (a master, a replica, three ``--sentinel``) on free ports,
a real worker whose three Redis uses all name only the sentinels (``sentinel://`` URLs and
``master_name``: Celery's own transport option for the broker and results, redis-py's
``Sentinel`` for the breakers). What is shown: no task is lost across the failover, the
worker keeps serving while the breaker store cannot be reached (local breakers, logged),
and after the promotion every process holds the new master's state.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import celery.exceptions
import pytest
import redis
from conftest import SETTINGS, WORKDIR, start_worker, stop_worker
from redis_servers import REDIS_SERVER, SentinelGroup, sentinel_group

from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.celery_app import FlexitasksApp
from flexitasks.config import Settings
from flexitasks.fleet import fleet_status
from flexitasks.harness import wait_until
from flexitasks.redis_connect import sync_client

pytestmark = pytest.mark.skipif(not REDIS_SERVER, reason="needs redis-server")

NODE = f"sentinel@{socket.gethostname()}"
CONCURRENCY = 2
PROCESSES = CONCURRENCY + 1
MESSAGES = [{"role": "user", "content": "Summarise this ticket"}]
TASKS = 60


def sentinel_settings(group: SentinelGroup) -> Settings:
    celery = SETTINGS.celery.model_copy(update={
        "broker_url": group.url, "result_backend": group.url, "master_name": group.master_name,
        # a producer keeps trying through the failover instead of failing the send
        "options": {"task_publish_retry_policy": {"max_retries": 60, "interval_start": 0, "interval_step": 0.25,
                                                  "interval_max": 0.5}},
    })
    sync = SETTINGS.sync.model_copy(update={"redis_url": group.url, "master_name": group.master_name})
    return Settings.model_validate({**SETTINGS.model_dump(), "celery": celery.model_dump(), "sync": sync.model_dump()})


@pytest.fixture(scope="module")
def deployment(fakes) -> Iterator[tuple[SentinelGroup, Settings, FlexitasksApp]]:
    with sentinel_group() as group:
        settings = sentinel_settings(group)
        config = WORKDIR / "flexitasks-sentinel.toml"
        config.write_text(settings.to_toml())
        producer = FlexitasksApp(settings, main="sentinel-producer")
        proc = start_worker(name="sentinel", concurrency=CONCURRENCY, config=config)
        try:
            wait_until(lambda: any(NODE in r for reply in producer.control.ping(timeout=0.5) or [] for r in reply),
                       60, interval=0, what=f"the sentinel worker (logs in {WORKDIR})")
            yield group, settings, producer
        finally:
            stop_worker(proc)
            producer.close()


def result_of(producer: FlexitasksApp, task_id: str, timeout: float = 120) -> dict[str, Any]:
    """The task's answer; a Redis error of this client while the backend fails over is
    retried (a task's own error is not)."""

    def answer() -> dict[str, Any] | None:
        try:
            return producer.AsyncResult(task_id).get(timeout=5)
        except (redis.RedisError, OSError, celery.exceptions.TimeoutError):
            return None

    found = wait_until(answer, timeout, interval=0.1, what=f"the answer of task {task_id}")
    assert found is not None
    return found


def agrees(settings: Settings, provider: str, state: str) -> Any:
    def probe() -> dict[str, Any] | None:
        try:
            status = fleet_status(settings)
        except (redis.RedisError, OSError):  # still failing over
            return None
        auth = status["providers"][provider]
        views = [p for p in status["processes"] if p.get("node") == NODE]
        ok = auth["state"] == state and len(views) == PROCESSES and all(
            (v["breakers"][provider]["state"], v["breakers"][provider]["generation"]) == (state, auth["generation"])
            for v in views)
        return status if ok else None

    return probe


def test_the_master_dies_mid_traffic_no_task_is_lost_and_the_fleet_converges_on_the_new_master(deployment, fakes):
    group, settings, producer = deployment
    for fp in fakes.values():
        fp.admin.reset()
    fakes["primary"].admin.set_fault(latency=0.1)
    store = RedisBreakerStore(sync_client(settings.sync), key_prefix=settings.sync.key_prefix,
                              channel=settings.sync.channel)
    policy = settings.breaker_policy(settings.provider("secondary"))
    store.force("secondary", policy, BreakerState.DISABLED)  # state the replica must carry over
    wait_until(agrees(settings, "secondary", "disabled"), 15, what="disabled everywhere before the failover")

    sent: list[Any] = []

    def traffic() -> None:
        for _ in range(TASKS):
            sent.append(producer.send_task("flexitasks.chat", args=[MESSAGES], queue=settings.celery.queue))
            time.sleep(0.05)

    sender = threading.Thread(target=traffic)
    sender.start()
    wait_until(lambda: len(sent) >= TASKS // 3, 30, what="traffic before the kill")
    old_master = group.master.port
    group.master.kill()
    sender.join(timeout=120)
    assert len(sent) == TASKS, "the producer could not send through the failover"

    answers = [result_of(producer, r.id) for r in sent]
    assert all(a["content"] and a["provider"] in ("primary", "secondary") for a in answers)
    assert len({r.id for r in sent}) == TASKS
    new_master = wait_until(group.master_port, 30, what="the sentinels to agree on a master")
    assert new_master == group.replica.port != old_master

    # After the promotion every process holds the new master's state: what was written before the
    # kill (replicated), and what is written now.
    wait_until(agrees(settings, "secondary", "disabled"), 30, what="the replicated state in every process")
    tripped = store.force("primary", settings.breaker_policy(settings.provider("primary")),
                          BreakerState.FORCED_OPEN).snapshot
    status = wait_until(agrees(settings, "primary", "forced_open"), 30, what="a trip on the new master everywhere")
    assert status["providers"]["primary"]["generation"] == tripped.generation
    after = [result_of(producer, producer.send_task("flexitasks.chat", args=[MESSAGES]).id) for _ in range(2)]
    assert all(r["attempts"][0]["outcome"] == "skipped" and r["provider"] == "secondary" for r in after)

    log = (WORKDIR / "worker-sentinel.log").read_text(errors="replace")
    # While the store could not be reached the worker served on local breakers, and said so.
    assert "serving with local-only breakers" in log or "breaker sync cannot use Redis" in log
