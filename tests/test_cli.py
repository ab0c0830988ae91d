"""The operator's command line against a real worker pool: ``flexitasks status`` and
``flexitasks metrics`` read what every process applied, straight from Redis."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import KEY_PREFIX, ROOT, SETTINGS

pytestmark = pytest.mark.usefixtures("worker")


def flexitasks(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flexitasks.cli", *args],
        cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=60,
    )


def test_status_and_metrics_show_a_trip_in_every_process(clean, redis_client):
    from flexitasks.breaker.redis_store import RedisBreakerStore
    from flexitasks.breaker.store import BreakerState

    store = RedisBreakerStore(redis_client, key_prefix=KEY_PREFIX, channel=SETTINGS.sync.channel)
    tripped = store.force("primary", SETTINGS.breaker_policy(SETTINGS.provider("primary")), BreakerState.FORCED_OPEN)

    deadline = time.monotonic() + 15
    while True:
        status = json.loads(flexitasks("status", "--json").stdout)
        views = [p["breakers"]["primary"] for p in status["processes"] if (p.get("node") or "").startswith("w1@")]
        if len(views) >= 5 and all(v["generation"] == tripped.snapshot.generation for v in views):
            break
        assert time.monotonic() < deadline, f"process views never caught up: {status}"
        time.sleep(0.3)
    assert status["providers"]["primary"]["state"] == "forced_open"
    assert {p["role"] for p in status["processes"]} >= {"worker-main", "worker-child"}
    assert all(v["state"] == "forced_open" for v in views)

    text = flexitasks("status").stdout
    assert "forced_open" in text and "primary" in text

    metrics = flexitasks("metrics", "--once").stdout
    assert 'flexitasks_breaker_state{provider="primary",state="forced_open"} 1.0' in metrics
    assert 'flexitasks_breaker_state{provider="primary",state="closed"} 0.0' in metrics
    assert 'flexitasks_breaker_lagging_processes{provider="primary"} 0.0' in metrics
    assert 'flexitasks_processes{role="worker-child"} 4.0' in metrics


def test_status_reports_an_unreachable_redis_in_one_line():
    env = {**os.environ, "FLEXITASKS_REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.run([sys.executable, "-m", "flexitasks.cli", "status"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("flexitasks: Redis unreachable")


def test_transitions_are_celery_events(clean):
    """A monitor (Flower, `celery events`) sees the transition a child made, once."""
    import threading

    from flexitasks import app, chat_task

    seen: list[dict] = []
    ready = threading.Event()

    def listen() -> None:
        with app.connection() as conn:
            receiver = app.events.Receiver(conn, handlers={"*": lambda ev: seen.append(ev)})
            ready.set()
            with contextlib.suppress(TimeoutError):
                receiver.capture(limit=None, timeout=20, wakeup=False)

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(1.0)  # the receiver's queue is bound before the first event
    clean["primary"].admin.set_fault(status=500)
    for _ in range(4):
        chat_task.delay([{"role": "user", "content": "hi"}]).get(timeout=30)

    deadline = time.monotonic() + 15
    while not any(ev["type"] == "breaker-opened" for ev in seen):
        assert time.monotonic() < deadline, f"no breaker-opened event among {sorted({e['type'] for e in seen})}"
        time.sleep(0.2)
    opened = [ev for ev in seen if ev["type"] == "breaker-opened"]
    assert len(opened) == 1
    assert opened[0]["provider"] == "primary" and opened[0]["state"] == "open"
    assert opened[0]["previous"] == "closed" and opened[0]["reason"] == "threshold"
