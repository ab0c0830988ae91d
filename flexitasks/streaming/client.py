"""``stream_chat``: enqueue a chat task and yield its answer as the provider produces it.

Owns the blocking reader of a task's stream (XREAD BLOCK from id 0, so no entry written
before the first read is lost), the caller's view of it (``events.Replay``), and the
steps of a read that ``aio.py``'s reader takes too (deadline, BLOCK, entries of a reply). Errors
are those of ``AsyncResult.get()``: when the stream says the task failed, or when it
stays silent while the task's result is already stored (entries lost to a Redis
outage, a worker without streaming), the result backend has the last word.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult

from flexitasks.celery_app import app
from flexitasks.disclosure import TASK_NAME
from flexitasks.per_process import PerProcess
from flexitasks.redis_connect import connect
from flexitasks.streaming.events import STREAM_HEADER, Replay, decode, stream_key

POLL = 1.0
"""Longest XREAD BLOCK: after this much silence the reader checks the task's result."""
BATCH = 512


def _sync_settings() -> Any:
    return app.settings.sync


_readers: PerProcess[dict[tuple[str, float], redis.Redis]] = PerProcess(dict)


def _reader(sync: Any) -> redis.Redis:
    """This process's blocking reader client of the ``[sync]`` Redis (XREAD BLOCK holds a
    connection of its pool per stream being read; a single Redis, Sentinel's master or a Cluster)."""
    readers = _readers.get()
    key = (sync.redis_url, sync.socket_timeout)
    client = readers.get(key)
    if client is None:
        client = connect(sync.redis_url, socket_timeout=POLL + sync.socket_timeout, master_name=sync.master_name,
                         cluster=sync.cluster)
        client = readers.setdefault(key, client)
    return client


def enqueue(messages: list[dict[str, Any]], options: dict[str, Any], stream: bool = True) -> AsyncResult:
    """Send ``flexitasks.chat``, with the streaming header (never among the task's options) if ``stream``."""
    return chat_task().apply_async(args=[messages], kwargs=options, task_id=str(uuid.uuid4()),
                                   headers={STREAM_HEADER: True} if stream else None)


def chat_task() -> Any:
    """The registered ``flexitasks.chat`` (looked up, not imported: ``tasks.py`` imports the
    sink of this package), so its own ``apply_async`` (hidden argsrepr, enqueue stamp) runs."""
    return app.tasks[TASK_NAME]


class ChatStream:
    """The events of one streamed chat task; iterate once. ``task_id`` names the task."""

    def __init__(self, result: AsyncResult, client: redis.Redis, key: str, timeout: float | None) -> None:
        self.result = result
        self.task_id: str = result.id
        self.replay = Replay()  # what has been shown so far (and when the worker got the text)
        deadline = None if timeout is None else time.monotonic() + timeout
        self._events = _follow(result, client, key, deadline, self.replay)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._events

    def __next__(self) -> dict[str, Any]:
        return next(self._events)


def stream_chat(messages: list[dict[str, Any]], *, timeout: float | None = None, **options: Any) -> ChatStream:
    """Enqueue the chat task now; iterate the result for ``delta`` / ``restart`` /
    ``tool_call`` events and ``done`` (with the task's result) last. ``timeout``: seconds
    for the whole answer, then ``celery.exceptions.TimeoutError`` as ``get(timeout)`` raises."""
    sync = _sync_settings()
    client = _reader(sync)
    result = enqueue(messages, options)
    return ChatStream(result, client, stream_key(sync.key_prefix, result.id), timeout)


def time_left(deadline: float | None, now: float) -> float | None:
    """Seconds until ``deadline`` (None: no deadline); past it, the ``TimeoutError`` that
    ``AsyncResult.get(timeout)`` raises. Shared by the blocking and the asyncio reader."""
    if deadline is None:
        return None
    left = deadline - now
    if left <= 0:
        raise CeleryTimeoutError("The operation timed out.")
    return left


def block_ms(left: float | None) -> int:
    """XREAD's BLOCK with ``left`` seconds to go: ``POLL`` at most, 1 ms at least."""
    block = POLL if left is None else min(POLL, left)
    return max(1, int(block * 1000))


def read_entries(reply: Any, last: str) -> tuple[str, list[dict[str, Any]]]:
    """The id to read on from and the decoded entries of an XREAD reply."""
    entries = []
    for _stream, items in reply:
        for entry_id, fields in items:
            last = entry_id
            entries.append(decode(fields))
    return last, entries


def _follow(
    result: AsyncResult, client: redis.Redis, key: str, deadline: float | None, replay: Replay | None = None
) -> Iterator[dict[str, Any]]:
    replay, last = replay or Replay(), "0-0"
    while True:
        reply = client.xread({key: last}, count=BATCH, block=block_ms(time_left(deadline, time.monotonic())))
        if not reply:
            if result.ready():  # the stream went quiet but the task is over: its result decides
                yield {"type": "done", "result": result.get(propagate=True)}
                return
            continue
        last, entries = read_entries(reply, last)
        yield from replay.feed(entries)
        if replay.failed:
            value = result.get(timeout=time_left(deadline, time.monotonic()), propagate=True)  # raises the task's error
            yield {"type": "done", "result": value}
        if replay.finished:
            return
