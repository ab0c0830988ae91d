"""Delivery of a chat task: nothing lost, nothing paid twice (issue 11, items 15-18).

Owns what a message carries besides its arguments and what a worker checks before it
calls any provider:

- the producer stamps ``flexitasks_enqueued`` (wall clock) on the message; the request's
  deadline is ``request_timeout`` from then, so a request that waited in the queue past it
  fails with ``RequestExpired`` and no provider is called;
- a redelivered, already answered message returns that answer without a provider call.
  The answer is read from Celery's result backend, which stores it before the message is
  acked: a key-value backend (Redis) keeping results (``result_expires``) at least as long
  as the broker could still redeliver the message (the visibility timeout, plus a margin).
  With any other backend, ignored results or a shorter ``result_expires``, a copy is kept in
  Redis by task id (``{prefix}:answer:{id}``) for that long, at one more round trip per task;
- each redelivery of a message is counted (``{prefix}:deliveries:{id}:{retry}``); one that
  keeps killing its worker fails with ``RedeliveredTooOften`` after
  ``celery.max_redeliveries`` redeliveries instead of looping for ever;
- a first delivery costs no Redis command here: only a message the broker marks redelivered
  (RabbitMQ's flag; kombu's Redis transport sets it on every message it restores: a dead
  worker's, a rejected one, one past the visibility timeout) can have been answered or be
  looping, so only such a message is checked;
- headers the worker cannot read (a malformed deadline) are ignored with a warning;
- Celery retries keep the producer's own headers (``retry_headers``).

Redis trouble here never fails a request: the checks are skipped (logged) and the call
goes ahead. It decides nothing about providers or breakers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis
from celery.backends.base import BaseKeyValueStoreBackend

from flexitasks.config import Settings
from flexitasks.errors import RedeliveredTooOften, RequestExpired
from flexitasks.per_process import PerProcess

log = logging.getLogger(__name__)

DEADLINE_HEADER = "flexitasks_deadline"
ENQUEUED_HEADER = "flexitasks_enqueued"
ANSWER_MARGIN = 300
"""Seconds an answer is kept beyond the visibility timeout: a worker killed between storing
an answer and acking its message is noticed, and the message redelivered, within it."""


def visibility_timeout(settings: Settings) -> int:
    """Seconds the Redis broker waits for an ack before redelivering a message: the longest a
    message can be held unacked without anything being wrong. A reserved message may wait for
    a busy child (one task: at most the hard time limit, ``request_timeout`` + 30 s; a retry's
    countdown is shorter) and then run (the same again): 2 x (``request_timeout`` + 30 s),
    300 s with the defaults, instead of Celery's hour."""
    return math.ceil(2 * (settings.retry.request_timeout + 30))


def _header_time(headers: Mapping[str, Any], name: str) -> float | None:
    """A wall-clock header, or None (with a warning) when it is absent or unreadable."""
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        log.warning("ignoring malformed %s header %r", name, str(raw)[:60])
        return None
    return value


def stamp(headers: dict[str, Any] | None) -> dict[str, Any]:
    """The producer's headers plus the enqueue time (kept if already there: a retry)."""
    stamped = dict(headers or {})
    stamped.setdefault(ENQUEUED_HEADER, time.time())
    return stamped


def redelivered(delivery_info: Mapping[str, Any] | None, headers: Mapping[str, Any]) -> bool:
    """Whether the broker says it delivered this message before: AMQP's ``redelivered`` flag, or
    the one kombu's Redis transport writes into a restored message (its headers and properties)."""
    return bool((delivery_info or {}).get("redelivered") or headers.get("redelivered"))


def retry_headers(request_headers: Mapping[str, Any] | None, carried: Mapping[str, Any]) -> dict[str, Any]:
    """Headers for a retried message: the producer's own (tracing ids, tenant tags, ...) kept,
    ours updated. Celery replaces the whole header dict when ``retry(headers=...)`` is given."""
    return {**(request_headers or {}), **carried}


def results_keep_answers(backend: Any, settings: Settings, ignore_result: bool) -> bool:
    """Whether Celery's result backend already holds every answer for as long as its message
    could be redelivered (then no copy of our own is kept): a key-value store the worker can
    read back (not ``rpc://``, not disabled), results stored, and kept long enough."""
    return (isinstance(backend, BaseKeyValueStoreBackend) and not ignore_result
            and settings.celery.result_expires >= visibility_timeout(settings) + ANSWER_MARGIN)


def stored_answer(backend: Any, task_id: str) -> dict[str, Any] | None:
    """The answer Celery's result backend holds for this task, if it succeeded."""
    meta = backend.get_task_meta(task_id)
    result = meta.get("result")
    return result if meta.get("status") == "SUCCESS" and isinstance(result, dict) else None


@dataclass
class Delivery:
    """What a worker knows about one delivery of a chat message before it runs it."""

    task_id: str | None
    deadline: float  # wall clock
    answer: dict[str, Any] | None = None  # already answered: return this, call nobody
    _keeper: AnswerKeeper | None = None  # set when the result backend does not keep answers

    def answered(self, result: dict[str, Any]) -> None:
        """Keep the answer until the broker can no longer redeliver this message."""
        if self._keeper is not None and self.task_id:
            self._keeper.keep(self.task_id, result)


class AnswerKeeper:
    """Answers and delivery counts in the flexitasks Redis (``sync.redis_url``)."""

    def __init__(self, settings: Settings) -> None:
        from flexitasks.redis_connect import sync_client

        s = settings.sync
        self.client = sync_client(s)  # a single Redis, Sentinel's master or a Cluster
        self.prefix = s.key_prefix
        self.ttl = visibility_timeout(settings) + ANSWER_MARGIN
        self.max_redeliveries = settings.celery.max_redeliveries

    def arrive(self, task_id: str, retries: int) -> tuple[dict[str, Any] | None, int]:
        """(the kept answer or None, how many times this message has now been redelivered)."""
        count_key = f"{self.prefix}:deliveries:{task_id}:{retries}"
        pipe = self.client.pipeline(transaction=False)
        pipe.get(f"{self.prefix}:answer:{task_id}")
        pipe.incr(count_key)
        pipe.expire(count_key, self.ttl)
        raw, count, _ = pipe.execute()
        answer = json.loads(raw) if raw else None
        return (answer if isinstance(answer, dict) else None), int(count)

    def keep(self, task_id: str, result: dict[str, Any]) -> None:
        try:
            self.client.set(f"{self.prefix}:answer:{task_id}", json.dumps(result), ex=self.ttl)
        except redis.RedisError as exc:
            log.warning("could not keep the answer of task %s (%s): a redelivery would call again",
                        task_id, type(exc).__name__)


_keepers: dict[int, PerProcess[AnswerKeeper]] = {}


def _keeper(settings: Settings) -> AnswerKeeper:
    """This process's keeper for these settings (one Redis connection pool per process)."""
    holder = _keepers.get(id(settings))
    if holder is None:
        holder = _keepers.setdefault(id(settings), PerProcess(lambda: AnswerKeeper(settings)))
    return holder.get()


def request_deadline(headers: Mapping[str, Any] | None, request_timeout: float, now: float | None = None) -> float:
    """Wall-clock deadline of the whole request: carried by a retry; else ``request_timeout``
    from when the producer sent it (or from now, for a producer that did not stamp it)."""
    headers = headers or {}
    now = time.time() if now is None else now
    carried = _header_time(headers, DEADLINE_HEADER)
    if carried is not None:
        return carried
    enqueued = _header_time(headers, ENQUEUED_HEADER)
    if enqueued is not None:
        return min(enqueued, now) + request_timeout  # a producer's clock ahead of ours buys no time
    return now + request_timeout


def arrive(settings: Settings, task_id: str | None, retries: int, headers: Mapping[str, Any] | None,
           eager: bool = False, redelivered: bool = False, results: Any = None) -> Delivery:
    """Check one delivery before running it: answered already, redelivered too often, or
    expired (in that order: an answer that exists is returned even if late). ``results`` is
    Celery's result backend when it keeps answers (``results_keep_answers``), else None."""
    now = time.time()
    timeout = settings.retry.request_timeout
    deadline = request_deadline(headers, timeout, now)
    keeper = None if eager or not task_id else _keeper(settings)
    if keeper is not None and task_id and redelivered:
        try:
            answer, redeliveries = keeper.arrive(task_id, retries)
            if answer is None and results is not None:
                answer = stored_answer(results, task_id)
        except Exception as exc:  # Redis or the result backend: the check is skipped, never fatal
            log.warning("delivery checks of task %s skipped (%s)", task_id, type(exc).__name__)
            answer, redeliveries = None, 0
        if answer is not None:
            log.info("task %s was already answered: returning that answer, calling no provider", task_id)
            return Delivery(task_id, deadline, answer=answer)
        if redeliveries > keeper.max_redeliveries:
            raise RedeliveredTooOften(
                f"message delivered {redeliveries + 1} times without finishing (it keeps killing its worker?); "
                f"failed after celery.max_redeliveries = {keeper.max_redeliveries} redeliveries"
            )
    if now >= deadline:
        enqueued = _header_time(headers or {}, ENQUEUED_HEADER)
        waited = f" {now - enqueued:.1f}s after it was sent" if enqueued is not None else ""
        raise RequestExpired(
            f"request expired: a worker could start it only{waited}, past its deadline "
            f"(request_timeout {timeout:g}s); no provider was called"
        )
    return Delivery(task_id, deadline, _keeper=keeper if results is None else None)
