"""``flexitasks.chat``: the task producers call.

Validation happens first and raises ``InvalidRequest`` (never retried, no provider
call). ``AllProvidersFailed`` is retried with Celery's own ``Task.retry`` and its
exponential backoff with full jitter, while retries and time are left: the request's
deadline (``request_timeout`` from its first run) travels with the retried message
in a header, so retries never stretch a request past it. Anything a provider refused
fails at once. Every option that comes from settings (retries, backoff, deadline) is
read from ``self.app.settings`` when the task runs, never when it is declared.
"""

from __future__ import annotations

import time
from typing import Any, cast

from celery import Task
from celery.utils.time import get_exponential_backoff_interval

from flexitasks.celery_app import FlexitasksApp, app
from flexitasks.config import CelerySettings
from flexitasks.errors import AllProvidersFailed
from flexitasks.models import ChatRequest

DEADLINE_HEADER = "flexitasks_deadline"


def request_deadline(task: Task, request_timeout: float) -> float:
    """Wall-clock deadline of the whole request: set by its first run, read by retries."""
    carried = (task.request.headers or {}).get(DEADLINE_HEADER)
    return float(carried) if carried is not None else time.time() + request_timeout


def retry_countdown(celery: CelerySettings, retries: int) -> float:
    return get_exponential_backoff_interval(
        factor=celery.retry_backoff,
        retries=retries,
        maximum=celery.retry_backoff_max,
        full_jitter=True,
    )


@app.task(bind=True, name="flexitasks.chat", acks_late=True, reject_on_worker_lost=True)
def chat_task(self: Task, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    flexi = cast(FlexitasksApp, self.app)
    settings = flexi.settings
    request = ChatRequest.parse(messages, options)
    deadline = request_deadline(self, settings.retry.request_timeout)
    try:
        return flexi.runtime.get().router.run(request, timeout=deadline - time.time()).model_dump()
    except AllProvidersFailed as exc:
        max_retries = settings.celery.max_task_retries
        countdown = retry_countdown(settings.celery, self.request.retries)
        if self.request.retries >= max_retries or time.time() + countdown >= deadline:
            raise
        raise self.retry(
            exc=exc, countdown=countdown, max_retries=max_retries, headers={DEADLINE_HEADER: deadline}
        ) from None
