"""Failover, the fleet-wide breaker and prompt redelivery with RabbitMQ as the broker
(issue 11, item 17): the same real ``celery worker`` and fakes, a worker whose broker is
``amqp://guest:guest@127.0.0.1:5672//`` (``FLEXITASKS_TEST_AMQP_URL``); results and breaker
state stay in the run's Redis DB.

Lean on purpose: one worker, a queue named after this run (RabbitMQ is shared by every
test run on the machine, so no run may consume another's tasks), three tests. Skipped when
RabbitMQ is not answering, except under CI=true (``.ci/run`` starts it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from conftest import KEY_PREFIX, RUN_ID, SETTINGS, start_worker, stop_worker

from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.celery_app import FlexitasksApp
from flexitasks.harness import wait_until

AMQP_URL = os.environ.get("FLEXITASKS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
QUEUE = f"ft-test-amqp-{RUN_ID}"
MESSAGES = [{"role": "user", "content": "Summarise this ticket"}]


def rabbitmq_answers() -> bool:
    parts = urlsplit(AMQP_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def amqp_app() -> Iterator[FlexitasksApp]:
    if not rabbitmq_answers():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"RabbitMQ is not answering at {AMQP_URL} (CI=true: .ci/run should have started it)")
        pytest.skip(f"RabbitMQ is not answering at {AMQP_URL}")
    settings = SETTINGS.model_copy(update={"celery": SETTINGS.celery.model_copy(update={"broker_url": AMQP_URL})})
    app = FlexitasksApp(settings, main="flexitasks-amqp-producer")
    yield app
    with app.connection_for_write() as conn:  # the run's queue goes with the run
        conn.default_channel.queue_delete(QUEUE)


@pytest.fixture(scope="module")
def amqp_worker(amqp_app: FlexitasksApp, redis_client: redis.Redis, fakes: dict[str, Any]) -> Iterator[list[Any]]:
    """A list holding the current worker process (a test may kill it and start another)."""
    procs = [start_amqp_worker(amqp_app, "amqp1")]
    try:
        yield procs
    finally:
        for proc in procs:
            stop_worker(proc)


def start_amqp_worker(app: FlexitasksApp, name: str) -> subprocess.Popen[bytes]:
    env_backup = os.environ.get("FLEXITASKS_BROKER_URL")
    os.environ["FLEXITASKS_BROKER_URL"] = AMQP_URL  # start_worker passes this process's environment on
    try:
        proc = start_worker("-Q", QUEUE, name=name, concurrency=2)
    finally:
        if env_backup is None:
            os.environ.pop("FLEXITASKS_BROKER_URL", None)
        else:
            os.environ["FLEXITASKS_BROKER_URL"] = env_backup

    def answered() -> bool:
        replies = app.control.ping(timeout=0.5) or []
        return any(f"{name}@" in node for reply in replies for node in reply)

    wait_until(answered, 60, interval=0, what=f"worker {name} on RabbitMQ to answer ping")
    return proc


def chat(app: FlexitasksApp, **options: Any) -> Any:
    return app.send_task("flexitasks.chat", args=[MESSAGES], kwargs=options, queue=QUEUE)


def test_failover_with_rabbitmq_as_the_broker(clean, amqp_app, amqp_worker):
    clean["primary"].admin.set_fault(status=500)
    result = chat(amqp_app).get(timeout=60)
    assert result["provider"] == "secondary" and result["content"].startswith("secondary:")
    assert [a["outcome"] for a in result["attempts"]] == ["error", "error", "ok"]


def test_the_breaker_opens_fleet_wide_with_rabbitmq_as_the_broker(clean, amqp_app, amqp_worker, redis_client):
    clean["primary"].admin.set_fault(status=503)
    threshold = SETTINGS.breaker.failure_threshold
    for _ in range(threshold):
        assert chat(amqp_app).get(timeout=60)["provider"] == "secondary"
    store = RedisBreakerStore(redis_client, key_prefix=KEY_PREFIX, channel=SETTINGS.sync.channel)
    assert store.snapshot(["primary"])["primary"].state is BreakerState.OPEN
    calls = clean["primary"].admin.stats()["requests"]
    later = chat(amqp_app).get(timeout=60)
    assert [(a["provider"], a["outcome"]) for a in later["attempts"]] == [("primary", "skipped"), ("secondary", "ok")]
    assert clean["primary"].admin.stats()["requests"] == calls


def test_a_killed_worker_s_request_is_redelivered_at_once(clean, amqp_app, amqp_worker):
    """RabbitMQ requeues an unacked message as soon as its consumer's connection drops: the
    next worker answers it within seconds (the Redis broker waits for the visibility timeout)."""
    clean["primary"].admin.set_fault(latency=30.0, count=1)  # the first call hangs
    pending = chat(amqp_app)
    wait_until(lambda: clean["primary"].admin.stats()["requests"] > 0, 30, what="the call to be in flight")
    victim = amqp_worker[0]
    for pid in subprocess.run(["pgrep", "-P", str(victim.pid)], capture_output=True, text=True).stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    victim.send_signal(signal.SIGKILL)  # the whole worker, main process included
    victim.wait()
    killed_at = time.monotonic()
    amqp_worker[0] = start_amqp_worker(amqp_app, "amqp2")
    answer = pending.get(timeout=60)
    assert answer["provider"] == "primary"
    assert clean["primary"].admin.stats()["requests"] == 2  # the killed call, then the redelivered one
    assert time.monotonic() - killed_at < 45  # not an hour: no visibility timeout involved
