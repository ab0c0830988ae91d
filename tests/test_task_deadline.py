"""The request's deadline is set by its first run and carried by Celery retries."""

from __future__ import annotations

import time

from flexitasks.config import CelerySettings
from flexitasks.tasks import DEADLINE_HEADER, chat_task, request_deadline, retry_countdown


def test_a_first_run_sets_the_deadline_and_a_retry_reads_it():
    chat_task.push_request(headers=None, retries=0)
    try:
        before = time.time()
        deadline = request_deadline(chat_task, 20.0)
        assert before + 20.0 <= deadline <= time.time() + 20.0
    finally:
        chat_task.pop_request()
    chat_task.push_request(headers={DEADLINE_HEADER: 1234.5}, retries=1)
    try:
        assert request_deadline(chat_task, 20.0) == 1234.5
    finally:
        chat_task.pop_request()


def test_retry_countdown_is_bounded_full_jitter():
    celery = CelerySettings(retry_backoff=2, retry_backoff_max=20)
    for retries in range(8):
        countdowns = {retry_countdown(celery, retries) for _ in range(50)}
        cap = min(celery.retry_backoff_max, celery.retry_backoff * 2**retries)
        assert all(0 <= c <= cap for c in countdowns)


def test_celery_sets_no_retry_limit_of_its_own():
    """A class-level limit would be Celery's default 3, a number nothing obeys: failed runs are
    bounded by ``celery.max_task_retries`` and the deadline, come-backs by the deadline only."""
    assert chat_task.max_retries is None
    chat_task.push_request(id="t1", args=[[]], kwargs={}, headers={}, retries=10, is_eager=True,
                           called_directly=False)
    try:
        retry = chat_task.retry(countdown=1, throw=False)  # raises MaxRetriesExceededError under a limit
    finally:
        chat_task.pop_request()
    assert retry.sig.options["retries"] == 11
