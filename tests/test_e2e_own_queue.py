"""Another Celery app on the same Redis keeps its tasks (issue 11, item 7), through the
session's real worker: flexitasks sends to and consumes only its own queue."""

from __future__ import annotations

import time

import pytest
import redis
from celery import Celery
from conftest import REDIS_URL, WORKDIR

from flexitasks import chat_task

pytestmark = pytest.mark.usefixtures("worker")


def test_another_apps_task_on_the_same_redis_is_left_for_its_own_workers(clean, redis_client: redis.Redis):
    other = Celery("someone-else", broker=REDIS_URL)
    other.send_task("someone_else.resize_image", args=[42])  # to Celery's default queue, "celery"
    try:
        answer = chat_task.delay([{"role": "user", "content": "hi"}]).get(timeout=30)
        assert answer["provider"] == "primary"  # our worker is up and serving its own queue
        time.sleep(1.0)
        assert redis_client.llen("celery") == 1  # still there for the other app's workers
        log = "\n".join(p.read_text(errors="replace") for p in WORKDIR.glob("worker-*.log"))
        assert "someone_else.resize_image" not in log  # neither received nor dropped as unregistered
    finally:
        redis_client.delete("celery")
        other.close()
