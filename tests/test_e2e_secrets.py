"""A key a provider echoes, and the user's own text, leave no trace outside the result
(issue 11, items 19 and 20), through the session's real ``celery worker`` and the fakes.

The fake providers answer with error text holding a real-looking key and a bearer token;
the test then greps everything a person could read: the result, the raised exception,
what the result backend stored, the worker's log file and every Celery event a monitor
(Flower) received meanwhile. The prompt carries a marker that must appear only in the
result (the fakes echo the last user message into the answer).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import WORKDIR

from flexitasks import AllProvidersFailed, app, chat_task

pytestmark = pytest.mark.usefixtures("worker")

PLANTED_KEY = "sk-proj-" + uuid.uuid4().hex + "Xy7"
PLANTED_TOKEN = "tok" + uuid.uuid4().hex + uuid.uuid4().hex[:8]
ECHO = f"Incorrect API key provided: {PLANTED_KEY}. Upstream header was Authorization: Bearer {PLANTED_TOKEN}"
SECRETS = (PLANTED_KEY, PLANTED_TOKEN, PLANTED_KEY[len("sk-proj-"):])


@contextlib.contextmanager
def events_seen() -> Iterator[list[dict[str, Any]]]:
    """Every Celery event (task-received/succeeded/failed/retried, breaker-*) seen meanwhile, with
    task events turned on in the worker as Flower does (they are off by default, as in Celery)."""
    seen: list[dict[str, Any]] = []
    replies = app.control.broadcast("enable_events", reply=True, timeout=5)
    assert replies, "the worker answered enable_events"
    with app.connection() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": seen.append})
        thread = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True
        )
        thread.start()
        time.sleep(1.0)  # the receiver's queue is bound before the first event
        try:
            yield seen
        finally:
            time.sleep(1.5)  # the last task events travel after the result is stored
            receiver.should_stop = True
            thread.join(timeout=5)
            app.control.broadcast("disable_events", reply=True, timeout=5)


def worker_log() -> str:
    return "\n".join(p.read_text(errors="replace") for p in WORKDIR.glob("worker-*.log"))


def stored(redis_client: redis.Redis, task_id: str) -> str:
    raw = redis_client.get(f"celery-task-meta-{task_id}")
    assert raw is not None, "the result backend holds the task's outcome"
    return raw.decode()


def assert_nowhere(texts: dict[str, str], needles: tuple[str, ...]) -> None:
    found = {where: n for where, text in texts.items() for n in needles if n in text}
    assert found == {}, f"leaked: {found}"


def test_a_key_echoed_by_a_provider_reaches_no_result_exception_log_or_event(clean, redis_client):
    marker = f"PROMPT-{uuid.uuid4().hex}"
    messages = [{"role": "user", "content": f"Summarise {marker}"}]
    clean["primary"].admin.set_fault(status=500, message=ECHO)  # fails over: the answer comes from secondary
    with events_seen() as events:
        answered = chat_task.delay(messages)
        result = answered.get(timeout=60)
        clean["secondary"].admin.set_fault(status=401, message=ECHO)  # now nobody answers
        failed = chat_task.delay(messages)
        with pytest.raises(AllProvidersFailed) as info:
            failed.get(timeout=60)

    assert result["provider"] == "secondary" and marker in result["content"]
    errors = [a["error"] for a in result["attempts"] if a["outcome"] == "error"]
    assert errors and all("Incorrect API key provided: sk-[REDACTED]" in e for e in errors)
    assert "Bearer [REDACTED]" in str(info.value)
    assert {e["type"] for e in events} >= {"task-received", "task-succeeded", "task-failed"}

    outputs = {
        "result": json.dumps(result),
        "exception": f"{info.value!s} {info.value!r}",
        "stored answer": stored(redis_client, answered.id),
        "stored failure": stored(redis_client, failed.id),
        "worker log": worker_log(),
        "events": json.dumps(events, default=str),
    }
    assert_nowhere(outputs, SECRETS)
    # The user's text (the prompt, and the answer that echoes it) is only in the result and
    # the stored answer: not in the worker's INFO log, not in any event Flower shows.
    assert_nowhere({k: outputs[k] for k in ("worker log", "events", "stored failure")}, (marker,))
    assert marker in outputs["stored answer"]
    succeeded = [e for e in events if e["type"] == "task-succeeded" and e["uuid"] == answered.id]
    assert succeeded and "<hidden:" in succeeded[0]["result"] and "'provider': 'secondary'" in succeeded[0]["result"]
