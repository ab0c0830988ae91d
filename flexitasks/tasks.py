"""``flexitasks.chat``: the task producers call.

Validation happens first and raises ``InvalidRequest`` (never retried, no provider
call). ``AllProvidersFailed`` is retried by Celery's own ``autoretry_for`` with
exponential backoff and jitter; anything the provider refused fails at once.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from flexitasks.celery_app import app, settings
from flexitasks.errors import AllProvidersFailed
from flexitasks.models import ChatRequest
from flexitasks.runtime import runtime


@app.task(
    bind=True,
    name="flexitasks.chat",
    autoretry_for=(AllProvidersFailed,),
    retry_backoff=settings.celery.retry_backoff,
    retry_backoff_max=settings.celery.retry_backoff_max,
    retry_jitter=True,
    max_retries=settings.celery.max_task_retries,
    acks_late=True,
    reject_on_worker_lost=True,
)
def chat_task(self: Task, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    request = ChatRequest.parse(messages, options)
    return runtime().router.run(request).model_dump()
