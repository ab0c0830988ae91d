"""The request's deadline is set by its first run and carried by Celery retries."""

from __future__ import annotations

import time

from flexitasks.celery_app import settings
from flexitasks.tasks import DEADLINE_HEADER, chat_task, request_deadline, retry_countdown


def test_a_first_run_sets_the_deadline_and_a_retry_reads_it():
    chat_task.push_request(headers=None, retries=0)
    try:
        before = time.time()
        deadline = request_deadline(chat_task)
        assert before + settings.retry.request_timeout <= deadline <= time.time() + settings.retry.request_timeout
    finally:
        chat_task.pop_request()
    chat_task.push_request(headers={DEADLINE_HEADER: 1234.5}, retries=1)
    try:
        assert request_deadline(chat_task) == 1234.5
    finally:
        chat_task.pop_request()


def test_retry_countdown_is_bounded_full_jitter():
    for retries in range(8):
        countdowns = {retry_countdown(retries) for _ in range(50)}
        cap = min(settings.celery.retry_backoff_max, settings.celery.retry_backoff * 2**retries)
        assert all(0 <= c <= cap for c in countdowns)
