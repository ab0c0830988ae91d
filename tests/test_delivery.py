"""Delivery: nothing lost, nothing paid twice (issue 11, items 15-18).

Units for the header rules, then the session's real ``celery worker`` (prefork, Redis
broker) and the fake providers: a stale request is refused without a provider call, a
redelivered message that was already answered returns that answer without one, a message
delivered too often fails with a clear error, and Celery retries keep the producer's own
headers (read from the retried message itself, held unacked by the worker until its
countdown ends).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from conftest import KEY_PREFIX, SETTINGS

from flexitasks import RedeliveredTooOften, RequestExpired, chat_task
from flexitasks.config import Settings
from flexitasks.delivery import (
    DEADLINE_HEADER,
    ENQUEUED_HEADER,
    redelivered,
    request_deadline,
    retry_headers,
    stamp,
    visibility_timeout,
)
from flexitasks.harness import wait_until

MESSAGES = [{"role": "user", "content": "Summarise this ticket"}]
REDELIVERED = {"redelivered": True}  # what kombu's Redis transport writes into a message it restores


@pytest.fixture()
def delivery_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    logger = logging.getLogger("flexitasks.delivery")
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    monkeypatch.setattr(logger, "disabled", False)
    logger.addHandler(handler)
    try:
        yield seen
    finally:
        logger.removeHandler(handler)


# -- units ------------------------------------------------------------------------------------------
def test_a_redelivery_is_known_by_the_brokers_flag_or_by_kombus_redis_restore_header():
    assert redelivered({"redelivered": True}, {})  # AMQP (RabbitMQ) sets it on the delivery
    assert redelivered({"redelivered": False}, {"redelivered": True})  # kombu's Redis transport, restored
    assert not redelivered({"exchange": "", "routing_key": "flexitasks"}, {"id": "x"})
    assert not redelivered(None, {})


def test_the_deadline_runs_from_when_the_producer_sent_the_request():
    now = 1_000_000.0
    assert request_deadline({ENQUEUED_HEADER: now - 50}, 120, now=now) == now + 70
    assert request_deadline({ENQUEUED_HEADER: now + 30}, 120, now=now) == now + 120  # a fast clock buys nothing
    assert request_deadline({DEADLINE_HEADER: now + 5, ENQUEUED_HEADER: now - 50}, 120, now=now) == now + 5
    assert request_deadline({}, 120, now=now) == now + 120


@pytest.mark.parametrize("bad", ["soon", "nan", "-1", "inf", "", [1]])
def test_a_malformed_deadline_header_is_ignored_with_a_warning(bad, delivery_log):
    now = 1_000_000.0
    assert request_deadline({DEADLINE_HEADER: bad}, 120, now=now) == now + 120
    assert any("ignoring malformed flexitasks_deadline header" in m for m in delivery_log)


def test_stamping_keeps_the_producers_headers_and_a_retry_keeps_the_first_stamp():
    stamped = stamp({"x-trace-id": "abc"})
    assert stamped["x-trace-id"] == "abc" and abs(stamped[ENQUEUED_HEADER] - time.time()) < 5
    assert stamp({ENQUEUED_HEADER: 12.0})[ENQUEUED_HEADER] == 12.0
    assert retry_headers({"x-trace-id": "abc", DEADLINE_HEADER: 1.0}, {DEADLINE_HEADER: 2.0}) == {
        "x-trace-id": "abc", DEADLINE_HEADER: 2.0}


def test_the_redis_visibility_timeout_follows_request_timeout():
    assert visibility_timeout(Settings()) == 300  # request_timeout 120 s: 5 minutes, not Celery's hour
    assert visibility_timeout(SETTINGS) == 2 * (SETTINGS.retry.request_timeout + 30)
    from flexitasks import app

    assert app.conf.broker_transport_options["visibility_timeout"] == visibility_timeout(SETTINGS)


# -- through the worker -------------------------------------------------------------------------------
def provider_calls(fakes: dict[str, object]) -> int:
    return sum(fp.admin.stats()["requests"] for fp in fakes.values())  # type: ignore[attr-defined]


@pytest.mark.usefixtures("worker")
def test_a_request_that_waited_past_its_deadline_is_not_run(clean):
    sent = time.time() - SETTINGS.retry.request_timeout - 5  # as if it had waited in a long queue
    pending = chat_task.apply_async(args=[MESSAGES], headers={ENQUEUED_HEADER: sent})
    with pytest.raises(RequestExpired, match="past its deadline"):
        pending.get(timeout=30)
    assert provider_calls(clean) == 0


def broker_idle(redis_client: redis.Redis) -> bool:
    """Every message of the chat queue taken and acked (kombu's Redis transport: the queue's
    list and its ``unacked`` hash are empty)."""
    return redis_client.llen(SETTINGS.celery.queue) == 0 and redis_client.hlen("unacked") == 0


@pytest.mark.usefixtures("worker")
def test_a_redelivered_answered_message_returns_the_answer_without_calling_again(clean, redis_client, caplog):
    first = chat_task.apply_async(args=[MESSAGES])
    answer = first.get(timeout=30)
    assert provider_calls(clean) == 1
    # the same message, delivered again: marked as kombu's Redis transport marks a message it restores
    again = chat_task.apply_async(args=[MESSAGES], task_id=first.id, headers=REDELIVERED)
    wait_until(lambda: broker_idle(redis_client), 30, what="the redelivered message to be served and acked")
    assert provider_calls(clean) == 1  # answered from the result backend: nobody called again
    assert again.get(timeout=30) == answer  # latency_ms and attempts included: the kept answer


def test_the_result_backend_keeps_answers_unless_it_cannot_and_then_a_copy_is_kept(redis_client):
    from celery import Celery

    from flexitasks import app
    from flexitasks.delivery import AnswerKeeper, Delivery, arrive, results_keep_answers

    assert results_keep_answers(app.backend, SETTINGS, ignore_result=False)  # Redis, results kept an hour
    assert not results_keep_answers(app.backend, SETTINGS, ignore_result=True)
    short = SETTINGS.model_copy(update={"celery": SETTINGS.celery.model_copy(update={"result_expires": 60.0})})
    assert not results_keep_answers(app.backend, short, ignore_result=False)  # gone before a redelivery
    rpc = Celery("rpc", broker=SETTINGS.celery.broker_url, backend="rpc://")
    assert not results_keep_answers(rpc.backend, SETTINGS, ignore_result=False)  # the caller's queue only

    # then the worker keeps a copy in Redis, and a redelivery finds it there
    task_id = str(uuid.uuid4())
    first = arrive(short, task_id, 0, {})
    assert isinstance(first._keeper, AnswerKeeper)
    first.answered({"content": "kept"})
    assert arrive(short, task_id, 0, {}, redelivered=True).answer == {"content": "kept"}
    # with a backend that keeps answers no copy is written
    assert arrive(SETTINGS, str(uuid.uuid4()), 0, {}, results=app.backend)._keeper is None
    assert Delivery("x", 0.0).answer is None


@pytest.mark.usefixtures("worker")
def test_a_message_delivered_too_often_fails_clearly(clean, redis_client: redis.Redis):
    task_id = str(uuid.uuid4())
    max_redeliveries = SETTINGS.celery.max_redeliveries
    # what max_redeliveries + 1 deliveries that each killed their worker leave behind
    redis_client.set(f"{KEY_PREFIX}:deliveries:{task_id}:0", max_redeliveries, ex=60)
    pending = chat_task.apply_async(args=[MESSAGES], task_id=task_id, headers=REDELIVERED)
    with pytest.raises(RedeliveredTooOften, match=f"delivered {max_redeliveries + 2} times"):
        pending.get(timeout=30)
    assert provider_calls(clean) == 0


@pytest.mark.usefixtures("worker")
def test_a_celery_retry_keeps_the_producers_headers(clean, redis_client: redis.Redis):
    clean["primary"].admin.set_fault(status=503)
    clean["secondary"].admin.set_fault(status=503)  # AllProvidersFailed: retried after a countdown
    pending = chat_task.apply_async(args=[MESSAGES], headers={"x-trace-id": "trace-42"})

    def retried_message() -> dict | None:
        for raw in redis_client.hvals("unacked"):  # held by the worker until its countdown ends
            message = json.loads(raw)[0]  # [message, exchange, routing key]
            headers = message["headers"]
            if headers.get("id") == pending.id and headers.get("retries", 0) >= 1:
                return headers
        return None

    headers = wait_until(retried_message, 20, interval=0.01, what="the retried message")
    assert headers["x-trace-id"] == "trace-42"
    assert float(headers[DEADLINE_HEADER]) > 0 and float(headers[ENQUEUED_HEADER]) > 0
    clean["primary"].admin.clear()
    assert pending.get(timeout=30)["provider"] == "primary"


def test_a_message_that_keeps_killing_its_worker_fails_after_max_redeliveries(clean):
    """The real thing: every delivery's child is SIGKILLed mid-call; after
    ``max_redeliveries`` redeliveries the next one fails clearly instead of looping."""
    import os
    import signal
    import subprocess

    from conftest import start_worker, stop_worker, wait_for_worker

    proc = start_worker("-Q", "poisonq", name="poisonq", concurrency=1)
    try:
        wait_for_worker("poisonq@")
        clean["primary"].admin.set_fault(latency=60.0)  # every call hangs: each delivery is in flight when killed
        pending = chat_task.apply_async(args=[MESSAGES], queue="poisonq")
        kills = SETTINGS.celery.max_redeliveries + 1
        for seen in range(1, kills + 1):
            wait_until(lambda n=seen: clean["primary"].admin.stats()["requests"] >= n, 60,
                       what=f"delivery {seen} to call the provider")
            for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
                os.kill(int(pid), signal.SIGKILL)
        with pytest.raises(RedeliveredTooOften, match=f"delivered {kills + 1} times"):
            pending.get(timeout=60)
        assert clean["primary"].admin.stats()["requests"] == kills  # the last delivery called nobody
    finally:
        clean["primary"].admin.clear()
        stop_worker(proc)
