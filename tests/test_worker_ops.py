"""What a worker tells its operator: ``inspect stats`` with the authoritative breaker
state, one WARNING line per transition, task ids on flexitasks' log lines, caller
errors in one line, and the result's repr limit taken from the config."""

from __future__ import annotations

import time

import pytest
from conftest import KEY_PREFIX, SETTINGS, WORKDIR

pytestmark = pytest.mark.usefixtures("worker")
LOG = WORKDIR / "worker-w1.log"


def log_since(offset: int) -> str:
    return LOG.read_bytes()[offset:].decode("utf-8", "replace")


def test_inspect_stats_shows_the_authoritative_state(clean, redis_client):
    from flexitasks import app
    from flexitasks.breaker.redis_store import RedisBreakerStore
    from flexitasks.breaker.store import BreakerState

    store = RedisBreakerStore(redis_client, key_prefix=KEY_PREFIX, channel=SETTINGS.sync.channel)
    store.force("secondary", SETTINGS.breaker_policy(SETTINGS.provider("secondary")), BreakerState.FORCED_OPEN)
    try:
        stats = app.control.inspect(timeout=5).stats() or {}
        mine = next(v for k, v in stats.items() if k.startswith("w1@"))
        assert mine["flexitasks_breakers"]["secondary"]["state"] == "forced_open"
        assert mine["flexitasks_breakers"]["secondary"]["reason"] == "operator"
        assert mine["flexitasks_breakers"]["primary"]["state"] == "closed"
    finally:
        store.force("secondary", SETTINGS.breaker_policy(SETTINGS.provider("secondary")), BreakerState.CLOSED)


def test_a_transition_is_logged_once_and_task_lines_carry_the_task_id(clean):
    from flexitasks import chat_task

    offset = LOG.stat().st_size
    clean["primary"].admin.set_fault(status=500)
    pending = [chat_task.delay([{"role": "user", "content": f"hi {i}"}]) for i in range(6)]
    for r in pending:
        assert r.get(timeout=60)["provider"] == "secondary"
    deadline = time.monotonic() + 10
    while "breaker primary: closed -> open" not in log_since(offset):
        assert time.monotonic() < deadline, log_since(offset)[-3000:]
        time.sleep(0.2)
    time.sleep(1.0)
    lines = log_since(offset).splitlines()
    opened = [line for line in lines if "breaker primary: closed -> open" in line]
    assert len(opened) == 1, opened
    assert "WARNING" in opened[0] and "reason threshold" in opened[0] and "generation" in opened[0]
    failed = [line for line in lines if "provider primary failed" in line]
    assert failed and all(any(f"[{r.id}]" in line for r in pending) for line in failed)


def test_a_caller_error_is_one_line_without_a_traceback(clean):
    from flexitasks import InvalidRequest, chat_task

    offset = LOG.stat().st_size
    pending = chat_task.delay([])
    with pytest.raises(InvalidRequest):
        pending.get(timeout=30)
    deadline = time.monotonic() + 10
    while pending.id not in log_since(offset) or "InvalidRequest" not in log_since(offset):
        assert time.monotonic() < deadline, log_since(offset)
        time.sleep(0.2)
    time.sleep(0.5)
    text = log_since(offset)
    assert "Traceback" not in text
    line = next(line for line in text.splitlines() if pending.id in line and "InvalidRequest" in line)
    assert "ERROR" not in line and "raised expected" in line


def test_the_result_repr_limit_comes_from_the_config():
    from types import SimpleNamespace

    from flexitasks import app
    from flexitasks.observability import _worker_starts

    task = app.tasks["flexitasks.chat"]
    task.resultrepr_maxsize = 1
    _worker_starts(sender=SimpleNamespace(app=app))
    assert task.resultrepr_maxsize == app.settings.celery.result_repr_maxsize == 1024
