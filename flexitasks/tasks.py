"""``flexitasks.chat``: the task producers call.

Validation happens first and raises ``InvalidRequest`` (never retried, no provider
call). ``AllProvidersFailed`` is retried with Celery's own ``Task.retry`` and its
exponential backoff with full jitter, while retries and time are left: the request's
deadline (``request_timeout`` from its first run) travels with the retried message
in a header, so retries never stretch a request past it. Anything a provider refused
fails at once. Every option that comes from settings (retries, backoff, deadline) is
read from ``self.app.settings`` when the task runs, never when it is declared.
A run that has to wait (``ComeBackLater``: a Retry-After, a cool-down)
is re-queued with that countdown and its state in a header instead of holding the
worker slot; such come-backs do not count against ``max_task_retries``.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

from celery import Task
from celery.utils.log import get_task_logger
from celery.utils.time import get_exponential_backoff_interval

from flexitasks import delivery
from flexitasks.celery_app import FlexitasksApp, app
from flexitasks.config import CelerySettings
from flexitasks.disclosure import TASK_NAME, ChatTask
from flexitasks.errors import AllProvidersFailed, ContentRejected, InvalidRequest, RequestRejected
from flexitasks.metrics.task_runs import record_run
from flexitasks.models import ChatRequest
from flexitasks.streaming.sink import open_sink

log = get_task_logger(__name__)
DEADLINE_HEADER = delivery.DEADLINE_HEADER
COMEBACKS_HEADER = "flexitasks_comebacks"  # how many of request.retries were come-backs
RESUME_HEADER = "flexitasks_resume"  # the RunState a come-back resumes with


def request_deadline(task: Task, request_timeout: float) -> float:
    """Wall-clock deadline of the whole request (``delivery.request_deadline``)."""
    return delivery.request_deadline(task.request.headers, request_timeout)


def retry_countdown(celery: CelerySettings, retries: int) -> float:
    return get_exponential_backoff_interval(
        factor=celery.retry_backoff,
        retries=retries,
        maximum=celery.retry_backoff_max,
        full_jitter=True,
    )


@app.task(
    base=ChatTask,
    bind=True,
    name=TASK_NAME,
    acks_late=True,
    reject_on_worker_lost=True,
    # No Celery-level limit (as Celery's own chord_unlock): celery.max_task_retries and the
    # request's deadline bound the failed runs, read when the task runs; come-backs are not counted.
    max_retries=None,
    # The caller's own errors: logged in one line at INFO, not as an unexpected failure.
    throws=(InvalidRequest, RequestRejected, ContentRejected),
)
def chat_task(self: Task, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    # Worker side only: producers import this module, and the router brings the provider SDKs.
    from flexitasks.failover.router import ComeBackLater, resume_state

    flexi = cast(FlexitasksApp, self.app)
    settings = flexi.settings
    try:
        request = ChatRequest.parse(messages, options, max_bytes=settings.requests.max_request_bytes)
    except InvalidRequest:
        record_run(flexi, "invalid")
        raise
    if request.metadata:  # the caller's tracing data: in the log beside the task id
        log.info("metadata %s", json.dumps(request.metadata, sort_keys=True))
    headers = self.request.headers or {}
    results = self.backend if delivery.results_keep_answers(self.backend, settings, self.ignore_result) else None
    arrival = delivery.arrive(settings, self.request.id, self.request.retries, headers, eager=self.request.is_eager,
                              redelivered=delivery.redelivered(self.request.delivery_info, headers), results=results)
    if arrival.answer is not None:  # a redelivery of a message already answered: nobody is called again
        return arrival.answer
    deadline = arrival.deadline
    comebacks = int(headers.get(COMEBACKS_HEADER) or 0)
    resume = resume_state(headers.get(RESUME_HEADER))
    try:
        router = flexi.runtime.get().router
        result = router.run(request, timeout=deadline - time.time(), resume=resume, stream=open_sink(self))
    except ComeBackLater as later:
        if self.request.is_eager:  # run in the caller's thread: Celery re-runs it at once
            time.sleep(later.delay)
        carried = {DEADLINE_HEADER: deadline, COMEBACKS_HEADER: comebacks + 1,
                   RESUME_HEADER: later.state.model_dump(mode="json")}
        raise self.retry(countdown=later.delay, headers=delivery.retry_headers(headers, carried),
                         max_retries=self.request.retries + 1) from None
    except InvalidRequest:
        record_run(flexi, "invalid")
        raise
    except RequestRejected as exc:
        record_run(flexi, "rejected", exc.attempts)
        raise
    except AllProvidersFailed as exc:
        failed_runs = self.request.retries - comebacks  # come-backs are not failed runs
        countdown = retry_countdown(settings.celery, failed_runs)
        if failed_runs >= settings.celery.max_task_retries or time.time() + countdown >= deadline:
            record_run(flexi, "failed", exc.attempts)
            raise
        record_run(flexi, "retried", exc.attempts)
        # A failed run starts the next afresh: no state of an earlier come-back rides along.
        carried = {DEADLINE_HEADER: deadline, COMEBACKS_HEADER: comebacks, RESUME_HEADER: None}
        raise self.retry(exc=exc, countdown=countdown, headers=delivery.retry_headers(headers, carried),
                         max_retries=self.request.retries + 1) from None
    answer = result.model_dump()  # once: the metrics read the same plain dicts
    answer["cost_usd"] = record_run(flexi, "ok", answer["attempts"], answer["provider"], answer["usage"])
    arrival.answered(answer)
    return answer
