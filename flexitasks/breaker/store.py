"""The contract every breaker store keeps: one atomic step per operation, and its result.

A store owns the *authoritative* state of every provider's breaker. The Redis store
(`redis_store.py`, Lua beside it) is what the fleet shares; the memory store
(`memory_store.py`) is the degraded mode when Redis is unreachable and the reference
model the Lua is tested against. What each operation does is in ``machine.py`` (one
object per operation); a store only runs them atomically. Neither knows about Celery,
HTTP or providers' SDKs.

Time is always the store's own clock (Redis ``TIME`` for Redis, an injected clock for
memory), in float seconds; callers never pass their host clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flexitasks.breaker.machine import (
    Admit,
    BreakerPolicy,
    CoolDown,
    Force,
    Operation,
    ProbeResult,
    RecordFailure,
    RecordSuccess,
)
from flexitasks.breaker.schema import BreakerSnapshot, BreakerState

__all__ = ["BreakerPolicy", "BreakerSnapshot", "BreakerState", "BreakerStore", "OperationStore", "StoreResult"]


@dataclass(frozen=True)
class StoreResult:
    """What one atomic store operation did.

    ``transitioned`` is True only for the single caller whose call changed ``state``
    (and bumped ``generation``); that caller alone reports the transition.
    ``granted`` answers ``admit``.
    """

    snapshot: BreakerSnapshot
    transitioned: bool = False
    previous: BreakerState | None = None
    granted: bool = False

    def holds_probe(self, owner: str) -> bool:
        """Is ``owner``'s admitted call the half-open probe?"""
        s = self.snapshot
        return self.granted and s.state is BreakerState.HALF_OPEN and s.probe_owner == owner


class BreakerStore(Protocol):
    """Atomic operations on the authoritative breaker state.

    ``run`` is one atomic step (one Lua script in Redis) that reads, decides, writes,
    bumps ``generation`` on a state change and publishes exactly one event for exactly
    one transition (the Redis store publishes from inside the script). The named
    methods are shorthands for ``run`` with the operation of that name (``machine.py``
    documents each).
    """

    def snapshot(self, providers: list[str]) -> dict[str, BreakerSnapshot]: ...
    def run(self, provider: str, policy: BreakerPolicy, op: Operation) -> StoreResult: ...
    def record_failure(self, provider: str, policy: BreakerPolicy, successes: int = 0) -> StoreResult: ...
    def record_success(self, provider: str, policy: BreakerPolicy, successes: int = 1) -> StoreResult: ...
    def admit(self, provider: str, policy: BreakerPolicy, owner: str) -> StoreResult: ...
    def probe_result(self, provider: str, policy: BreakerPolicy, owner: str, ok: bool) -> StoreResult: ...
    def cool_down(self, provider: str, policy: BreakerPolicy, seconds: float) -> StoreResult: ...
    def force(self, provider: str, policy: BreakerPolicy, state: BreakerState) -> StoreResult: ...


class OperationStore:
    """The named shorthands spelled once: a store implements ``snapshot`` and ``run``."""

    def run(self, provider: str, policy: BreakerPolicy, op: Operation) -> StoreResult:
        raise NotImplementedError

    def record_failure(self, provider: str, policy: BreakerPolicy, successes: int = 0) -> StoreResult:
        return self.run(provider, policy, RecordFailure(successes))

    def record_success(self, provider: str, policy: BreakerPolicy, successes: int = 1) -> StoreResult:
        return self.run(provider, policy, RecordSuccess(successes))

    def admit(self, provider: str, policy: BreakerPolicy, owner: str) -> StoreResult:
        return self.run(provider, policy, Admit(owner))

    def probe_result(self, provider: str, policy: BreakerPolicy, owner: str, ok: bool) -> StoreResult:
        return self.run(provider, policy, ProbeResult(owner, ok))

    def cool_down(self, provider: str, policy: BreakerPolicy, seconds: float) -> StoreResult:
        return self.run(provider, policy, CoolDown(seconds))

    def force(self, provider: str, policy: BreakerPolicy, state: BreakerState) -> StoreResult:
        return self.run(provider, policy, Force(state))
