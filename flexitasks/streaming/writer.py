"""Worker side transport: one thread per process that writes stream entries to Redis.

Owns: the queue between the threads that produce events (a provider call's read loop,
the task's end) and Redis, and the batching. A producer never waits for Redis: ``put``
appends and wakes the thread, which writes everything queued in one pipelined round
trip (XADD with an approximate MAXLEN per entry, an EXPIRE per stream), merging
consecutive deltas of a stream into one entry. So the first token goes out at once,
and tokens that arrive while a write is in flight go together in the next one.

Streaming never fails a task: a Redis error drops that batch with a warning (the
reader then falls back to the task's result). Knows nothing of Celery or providers.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis

from flexitasks.streaming.events import DONE_TTL, LIVE_TTL, MAXLEN, encode, is_terminal

log = logging.getLogger(__name__)

WARN_EVERY = 30.0
MAX_QUEUED = 100_000
"""Entries waiting for Redis at most; more are dropped (counted) until it answers again."""


class StreamWriter:
    def __init__(self, client: redis.Redis, maxlen: int = MAXLEN, live_ttl: int = LIVE_TTL,
                 done_ttl: int = DONE_TTL) -> None:
        self._client = client
        self._maxlen, self._live_ttl, self._done_ttl = maxlen, live_ttl, done_ttl
        self._queue: list[tuple[str, dict[str, Any]]] = []
        self._cond = threading.Condition()
        self._busy = False
        self._last_warning = 0.0
        self.dropped = 0
        self._thread = threading.Thread(target=self._loop, name="flexitasks-stream-writer", daemon=True)
        self._thread.start()

    def put(self, key: str, event: dict[str, Any]) -> None:
        with self._cond:
            if len(self._queue) >= MAX_QUEUED:  # Redis is gone for a while: memory stays bounded
                self.dropped += 1
                return
            self._queue.append((key, event))
            self._cond.notify()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until everything queued so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch, self._queue, self._busy = self._queue, [], True
            try:
                self._write(batch)
            except redis.RedisError as exc:
                self._dropped(len(batch), exc)
            except Exception:  # a bug must not kill the thread every later stream depends on
                log.exception("stream writer: a batch of %d entries was dropped", len(batch))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _write(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        ttl: dict[str, int] = {}
        for key, event in merge_deltas(batch):
            pipe.xadd(key, encode(event), maxlen=self._maxlen, approximate=True)
            ttl[key] = self._done_ttl if is_terminal(event) else ttl.get(key, self._live_ttl)
        for key, seconds in ttl.items():
            pipe.expire(key, seconds)
        pipe.execute()

    def _dropped(self, count: int, exc: Exception) -> None:
        self.dropped += count
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            log.warning("stream writer: Redis unreachable (%s); %d stream entries dropped so far "
                        "(readers fall back to the task result)", exc, self.dropped)


def merge_deltas(batch: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Consecutive deltas of the same stream become one entry; the order of entries within
    each stream is kept (entries of different streams may interleave freely)."""
    out: list[tuple[str, dict[str, Any]]] = []
    last: dict[str, int] = {}  # stream key -> index in out of its latest entry
    for key, event in batch:
        i = last.get(key)
        if i is not None and event.get("type") == "delta" and out[i][1].get("type") == "delta":
            out[i] = (key, {"type": "delta", "text": out[i][1]["text"] + event["text"]})
            continue
        last[key] = len(out)
        out.append((key, event))
    return out

