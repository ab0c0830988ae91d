"""In-process breaker store: the degraded mode when Redis is unreachable, and the
reference model the Lua script is tested against.

This module owns only the locking, the clock read and the jitter draw around an
operation's ``apply``; the rules are in ``machine.py``. State is local to this process
(no other worker sees it), so it must not be mistaken for the fleet's authority. It
knows nothing of Redis, Celery, HTTP or SDKs.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from flexitasks.breaker import machine
from flexitasks.breaker.store import BreakerPolicy, BreakerSnapshot, OperationStore, StoreResult

__all__ = ["MemoryBreakerStore"]

log = logging.getLogger(__name__)


class MemoryBreakerStore(OperationStore):
    """``BreakerStore`` in a dict behind one lock; thread-safe, events via ``publish``.

    ``publish`` is called with each event dict (the same JSON shape the Redis store
    publishes) while the lock is held, so events leave in generation order; it must be
    quick. It may call back into the store (the lock is re-entrant). An exception from
    it is logged, not raised: the state has changed already and the caller must learn
    the result.
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        publish: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._publish = publish
        self._lock = threading.RLock()
        self._records: dict[str, machine.BreakerRecord] = {}

    def snapshot(self, providers: list[str]) -> dict[str, BreakerSnapshot]:
        with self._lock:
            now = self._now()
            return {p: machine.snapshot_of(self._record(p), now) for p in dict.fromkeys(providers)}

    # ------------------------------------------------------------ plumbing

    def _now(self) -> float:
        now = float(self._clock())
        if not math.isfinite(now):
            raise ValueError(f"clock returned {now!r}")
        return now

    def _record(self, provider: str) -> machine.BreakerRecord:
        """The provider's record, or a fresh CLOSED one (not stored until written)."""
        if not isinstance(provider, str) or not provider:
            raise ValueError(f"provider must be a non-empty str, got {provider!r}")
        record = self._records.get(provider)
        return record if record is not None else machine.BreakerRecord.new(provider)

    def run(self, provider: str, policy: BreakerPolicy, op: machine.Operation) -> StoreResult:
        with self._lock:
            record = self._record(provider)
            # Validate before the draw so a bad call does not shift the jitter sequence.
            machine.validate_policy(policy)
            op.validate()
            now = self._now()
            rand = self._rng.random() if op.draws_jitter else 0.0
            decision = op.apply(record, policy, now, rand)
            self._records[provider] = record
            result = StoreResult(
                snapshot=machine.snapshot_of(record, now),
                transitioned=decision.transitioned,
                previous=decision.previous,
                granted=decision.granted,
            )
            if decision.event is not None and self._publish is not None:
                try:
                    self._publish(decision.event)
                except Exception:  # the transition happened: report it, don't undo it
                    log.exception("breaker event publish failed for provider %r", provider)
            return result
