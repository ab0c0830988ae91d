"""In-process limiter backend: the reference model of ``limit.lua`` and the fallback
while Redis is unreachable.

Owns only the lock and the clock read around ``machine``'s rules. Its state is this
process's alone: as a fallback it limits one process, not the fleet.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from flexitasks.limits import machine
from flexitasks.limits.machine import LimitView, Verdict
from flexitasks.limits.policy import LimitPolicy

__all__ = ["MemoryLimiterBackend"]


class MemoryLimiterBackend:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._records: dict[str, machine.LimitRecord] = {}

    def _now(self) -> float:
        now = float(self._clock())
        if not math.isfinite(now):
            raise ValueError(f"clock returned {now!r}")
        return now

    def _record(self, provider: str) -> machine.LimitRecord:
        return self._records.setdefault(provider, machine.LimitRecord())

    def check(self, provider: str, policy: LimitPolicy, tokens: int, lease: str, max_wait: float = 0.0) -> Verdict:
        with self._lock:
            return machine.check(self._record(provider), policy, self._now(), tokens, lease, max_wait)

    def finish(self, provider: str, policy: LimitPolicy, lease: str, reserved: int, actual: int | None) -> LimitView:
        with self._lock:
            return machine.finish(self._record(provider), policy, self._now(), lease, reserved, actual)

    def peek(self, providers: list[str]) -> dict[str, LimitView]:
        with self._lock:
            now = self._now()
            return {p: machine.view_of(self._records.get(p) or machine.LimitRecord(), now)
                    for p in dict.fromkeys(providers)}
