"""Worker side of streaming: the per-task delta sink, built only when the caller asked.

Owns: turning what a task run reports (a provider attempt's text, an attempt that
failed after sending text, the task's end) into stream entries (``events.py``), handed
to this process's ``StreamWriter``. A task nobody streams gets no sink and costs no
Redis command. Must not decide anything about failover (the router does) or touch a
provider; the adapters only ever see the plain ``on_delta(text)`` callback.

The task's end is taken from Celery's ``task_success`` / ``task_failure`` signals, so
the task body only builds the sink and hands it to the router. A run that Celery
retries writes no end: the next run continues the same stream.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.signals import task_failure, task_success
from redis.backoff import NoBackoff
from redis.retry import Retry

from flexitasks.config import Settings
from flexitasks.per_process import PerProcess
from flexitasks.redis_connect import connect
from flexitasks.streaming.events import STREAM_HEADER, stream_key
from flexitasks.streaming.writer import StreamWriter


@dataclass(frozen=True)
class StreamTarget:
    """Where streams are written: the Redis of flexitasks' own state, under its key prefix."""

    redis_url: str
    key_prefix: str
    socket_timeout: float = 2.0
    master_name: str | None = None  # sentinel:// URLs
    cluster: bool = False

    @classmethod
    def of(cls, settings: Settings) -> StreamTarget:
        s = settings.sync
        return cls(s.redis_url, s.key_prefix, s.socket_timeout, s.master_name, s.cluster)


def _new_writer(target: StreamTarget) -> StreamWriter:
    # One quick retry, no backoff (single Redis, Sentinel's master or a Cluster alike): a stream
    # is live or useless, and a writer that waits seconds per batch for a Redis that is down
    # only piles up entries nobody will read.
    return StreamWriter(connect(target.redis_url, socket_timeout=target.socket_timeout,
                                master_name=target.master_name, cluster=target.cluster, retry=Retry(NoBackoff(), 1)))


_writers: PerProcess[dict[StreamTarget, StreamWriter]] = PerProcess(dict)
_writers_lock = threading.Lock()


def process_writer(target: StreamTarget) -> StreamWriter:
    """This process's writer for ``target``: built on first use, again after a fork."""
    writers = _writers.get()
    writer = writers.get(target)
    if writer is None:
        with _writers_lock:
            writer = writers.get(target) or writers.setdefault(target, _new_writer(target))
    return writer


class _Attempt:
    def __init__(self, sink: DeltaSink, provider: str) -> None:
        self.sink, self.provider, self.sent = sink, provider, False

    def on_delta(self, text: str) -> None:
        if not text:
            return
        if not self.sent:
            self.sent = True
            self.sink.put({"type": "attempt", "provider": self.provider, "t": time.time()})
        self.sink.put({"type": "delta", "text": text})


class DeltaSink:
    """One task run's stream. The router calls ``attempt`` before each provider call and
    passes the callback it returns to the adapter; it calls ``failed`` when that call
    failed, which voids the text it sent (a ``restart`` entry) if it sent any."""

    def __init__(self, writer: StreamWriter, key: str) -> None:
        self.writer, self.key = writer, key
        self._current: _Attempt | None = None

    def put(self, event: dict[str, Any]) -> None:
        self.writer.put(self.key, event)

    def attempt(self, provider: str) -> Callable[[str], None]:
        self._current = _Attempt(self, provider)
        return self._current.on_delta

    def failed(self, provider: str, reason: str) -> None:
        current = self._current
        if current is not None and current.sent:
            self.put({"type": "restart", "provider": provider, "reason": reason})
        self._current = None

    def finished(self, result: dict[str, Any]) -> None:
        """Each tool call as one event (its arguments complete), then the result."""
        for call in result.get("tool_calls") or []:
            self.put({"type": "tool_call", "tool_call": call})
        self.put({"type": "done", "result": result})

    def failed_for_good(self) -> None:
        self.put({"type": "failed"})


def wants_stream(request: Any) -> bool:
    headers = getattr(request, "headers", None) or {}
    return bool(headers.get(STREAM_HEADER) or getattr(request, STREAM_HEADER, None))


def open_sink(task: Task) -> DeltaSink | None:
    """The sink of the running task, or None when its caller did not ask to stream."""
    request = task.request
    if request.id is None or not wants_stream(request):
        return None
    target = StreamTarget.of(task.app.settings)  # type: ignore[attr-defined]  (a FlexitasksApp)
    return DeltaSink(process_writer(target), stream_key(target.key_prefix, request.id))


@task_success.connect
def _on_success(sender: Task | None = None, result: Any = None, **_: Any) -> None:
    sink = open_sink(sender) if sender is not None else None
    if sink is not None:  # a Mapping (``disclosure.ChatAnswer`` hides its repr, not its items)
        sink.finished(dict(result) if isinstance(result, Mapping) else {"value": result})


@task_failure.connect
def _on_failure(sender: Task | None = None, **_: Any) -> None:
    sink = open_sink(sender) if sender is not None else None
    if sink is not None:
        sink.failed_for_good()
