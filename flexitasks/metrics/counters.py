"""Fleet-wide per-call counters in Redis: the per-process recorder and the readers.

Why Redis and not prometheus_client's multiprocess mode: multiprocess mode keeps one
file per process on one host's disk, so it needs an exporter on every host, a shared
directory and clean-up of dead children's files; the fleet already shares a Redis, and
one exporter (or the dashboard) anywhere can then read every host's totals. Why
batched: ``record`` only adds to a dict under a lock (microseconds, no I/O in the
task's path); one thread per process writes what has piled up about once a second in a
single pipeline, so Redis sees one round trip per process per second, not per call.
A process killed between two flushes loses at most a second of counts.

Layout (key prefix ``{key_prefix}:metrics``):

* ``...:totals`` hash, field ``["name", label, ...]`` (JSON), value a float (HINCRBYFLOAT);
  histogram buckets are stored per bucket (not cumulative) as ``["name_bucket", provider, le]``
  with ``_sum`` and ``_count`` beside them. TTL 30 days, refreshed on each flush.
* ``...:recent:{epoch // 10}`` hash of 10-second buckets for the dashboard's per-minute
  rates, fields like ``calls|primary|ok``; TTL 3 minutes.

Owns nothing else: what a run counts is ``derive.py``'s job.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from flexitasks.metrics.derive import HISTOGRAM_BUCKETS, Observations

log = logging.getLogger(__name__)

RECENT_BUCKET = 10  # seconds per rate bucket
RECENT_TTL = 180
TOTALS_TTL = 30 * 86400


def totals_key(prefix: str) -> str:
    return f"{prefix}:metrics:totals"


def recent_key(prefix: str, bucket: int) -> str:
    return f"{prefix}:metrics:recent:{bucket}"


def bucket_label(histogram: str, value: float) -> str:
    """The upper bound (``le``) of the histogram bucket holding ``value``."""
    bounds = HISTOGRAM_BUCKETS[histogram]
    i = bisect.bisect_left(bounds, value)
    return repr(float(bounds[i])) if i < len(bounds) else "+Inf"


class MetricsRecorder:
    """Per-process, thread-safe; build one per process (after fork), never share it across one."""

    def __init__(self, client: redis.Redis, key_prefix: str, interval: float = 1.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.prefix = key_prefix
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._totals: dict[tuple[str, ...], float] = {}
        self._recent: dict[int, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed_flushes = 0

    def record(self, obs: Observations) -> None:
        """Add one run's observations; no I/O (the flush thread writes them)."""
        bucket = int(self.clock() // RECENT_BUCKET)
        with self._lock:
            totals = self._totals  # keyed by (name, *labels): JSON-encoded once per flush, not per call
            for (name, labels), value in obs.counters.items():
                field = (name, *labels)
                totals[field] = totals.get(field, 0.0) + value
            for histogram, provider, seconds in obs.samples:
                for field, value in (
                    ((f"{histogram}_bucket", provider, bucket_label(histogram, seconds)), 1.0),
                    ((f"{histogram}_sum", provider), seconds),
                    ((f"{histogram}_count", provider), 1.0),
                ):
                    totals[field] = totals.get(field, 0.0) + value
            recent = self._recent.setdefault(bucket, {})
            for field, value in obs.recent.items():
                recent[field] = recent.get(field, 0.0) + value
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="flexitasks-metrics", daemon=True)
                self._thread.start()

    def flush(self) -> bool:
        """Write what has piled up in one pipeline; on a Redis error keep it for the next try."""
        with self._lock:
            totals, self._totals = self._totals, {}
            recent, self._recent = self._recent, {}
        if not totals and not recent:
            return True
        try:
            pipe = self.client.pipeline(transaction=False)
            tkey = totals_key(self.prefix)
            for field, value in totals.items():
                pipe.hincrbyfloat(tkey, json.dumps(field), value)
            pipe.expire(tkey, TOTALS_TTL)
            for bucket, fields in recent.items():
                rkey = recent_key(self.prefix, bucket)
                for field, value in fields.items():
                    pipe.hincrbyfloat(rkey, field, value)
                pipe.expire(rkey, RECENT_TTL)
            pipe.execute()
            return True
        except (redis.RedisError, OSError) as exc:
            self.failed_flushes += 1
            if self.failed_flushes == 1:
                log.warning("metrics flush to Redis failed (%s); keeping the counts for the next try", exc)
            self._merge_back(totals, recent)
            return False

    def _merge_back(self, totals: dict[tuple[str, ...], float], recent: dict[int, dict[str, float]]) -> None:
        oldest = int(self.clock() // RECENT_BUCKET) - RECENT_TTL // RECENT_BUCKET
        with self._lock:
            for field, value in totals.items():
                self._totals[field] = self._totals.get(field, 0.0) + value
            for bucket, fields in recent.items():
                if bucket < oldest:
                    continue  # too old for a rate: dropped rather than kept forever
                mine = self._recent.setdefault(bucket, {})
                for field, value in fields.items():
                    mine[field] = mine.get(field, 0.0) + value

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        """Stop the thread and write what is left (worker shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.flush()


def read_totals(client: redis.Redis, key_prefix: str) -> dict[tuple[str, ...], float]:
    """Every total of the fleet: ``{("provider_calls_total", "primary", "ok", ""): 12.0, ...}``."""
    raw = client.hgetall(totals_key(key_prefix))
    out: dict[tuple[str, ...], float] = {}
    for field, value in raw.items():
        try:
            out[tuple(json.loads(field))] = float(value)
        except (ValueError, TypeError):
            continue
    return out


def read_recent(client: redis.Redis, key_prefix: str, seconds: int = 60,
                now: float | None = None) -> dict[str, float]:
    """Sums over the last ``seconds`` (in 10-second buckets, the current one included)."""
    current = int((time.time() if now is None else now) // RECENT_BUCKET)
    buckets = range(current - seconds // RECENT_BUCKET + 1, current + 1)
    pipe = client.pipeline(transaction=False)
    for b in buckets:
        pipe.hgetall(recent_key(key_prefix, b))
    out: dict[str, float] = {}
    for fields in pipe.execute():
        for field, value in fields.items():
            name = field.decode() if isinstance(field, bytes) else str(field)
            out[name] = out.get(name, 0.0) + float(value)
    return out


def rates_by_provider(recent: dict[str, float]) -> dict[str, Any]:
    """``{"calls": {provider: {outcome: n}}, "failovers": {"a->b": n}, "requests": {outcome: n}}``."""
    calls: dict[str, dict[str, float]] = {}
    moves: dict[str, float] = {}
    requests: dict[str, float] = {}
    for field, value in recent.items():
        parts = field.split("|")
        if parts[0] == "calls" and len(parts) == 3:
            calls.setdefault(parts[1], {})[parts[2]] = value
        elif parts[0] == "failovers" and len(parts) == 3:
            moves[f"{parts[1]}->{parts[2]}"] = value
        elif parts[0] == "requests" and len(parts) == 2:
            requests[parts[1]] = value
    return {"calls": calls, "failovers": moves, "requests": requests}
