"""``flexitasks.chat``: the task producers call.

Validation happens first and raises ``InvalidRequest`` (never retried, no provider
call). ``AllProvidersFailed`` is retried with Celery's own ``Task.retry`` and its
exponential backoff with full jitter, while retries and time are left: the request's
deadline (``request_timeout`` from its first run) travels with the retried message
in a header, so retries never stretch a request past it. Anything a provider refused
fails at once.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from flexitasks.celery_app import app, settings
from flexitasks.errors import AllProvidersFailed
from flexitasks.models import ChatRequest
from flexitasks.runtime import runtime

DEADLINE_HEADER = "flexitasks_deadline"


def request_deadline(task: Task) -> float:
    """Wall-clock deadline of the whole request: set by its first run, read by retries."""
    carried = (task.request.headers or {}).get(DEADLINE_HEADER)
    return float(carried) if carried is not None else time.time() + settings.retry.request_timeout


def retry_countdown(retries: int) -> float:
    return get_exponential_backoff_interval(
        factor=settings.celery.retry_backoff,
        retries=retries,
        maximum=settings.celery.retry_backoff_max,
        full_jitter=True,
    )


@app.task(
    bind=True,
    name="flexitasks.chat",
    max_retries=settings.celery.max_task_retries,
    acks_late=True,
    reject_on_worker_lost=True,
)
def chat_task(self: Task, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    request = ChatRequest.parse(messages, options)
    deadline = request_deadline(self)
    try:
        return runtime().router.run(request, timeout=deadline - time.time()).model_dump()
    except AllProvidersFailed as exc:
        countdown = retry_countdown(self.request.retries)
        if self.request.retries >= self.max_retries or time.time() + countdown >= deadline:
            raise
        raise self.retry(exc=exc, countdown=countdown, headers={DEADLINE_HEADER: deadline}) from None
