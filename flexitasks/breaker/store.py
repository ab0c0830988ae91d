"""The contract every breaker store keeps: what a transition is, what it returns.

A store owns the *authoritative* state of every provider's breaker. The Redis store
(`redis_store.py`, Lua beside it) is what the fleet shares; the memory store
(`memory_store.py`) is the degraded mode when Redis is unreachable and the reference
model the Lua is tested against. Neither knows about Celery, HTTP or providers' SDKs.

Time is always the store's own clock (Redis ``TIME`` for Redis, an injected clock for
memory), in float seconds; callers never pass their host clock.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"  # operator: skipped until reset
    DISABLED = "disabled"  # operator: never trips, failures not counted


@dataclass(frozen=True)
class BreakerPolicy:
    """Thresholds of one provider's breaker (built from config ``[breaker]``)."""

    failure_threshold: int = 5
    failure_rate_threshold: float = 0.5
    window: float = 60.0
    recovery_timeout: float = 10.0
    max_recovery_timeout: float = 60.0
    success_threshold: int = 1
    jitter: float = 0.1  # open interval is shortened by up to this fraction
    probe_ttl: float = 30.0  # lifetime of the half-open probe token (>= provider timeout)


@dataclass(frozen=True)
class BreakerSnapshot:
    """Authoritative state of one provider at ``now`` (store time)."""

    provider: str
    state: BreakerState = BreakerState.CLOSED
    generation: int = 0
    open_until: float = 0.0  # OPEN: when a probe may start
    reopen_count: int = 0  # consecutive re-opens, drives the exponential recovery
    probe_owner: str | None = None
    probe_until: float = 0.0  # HALF_OPEN: when the probe token expires
    probe_successes: int = 0
    failures: int = 0  # in the rolling window
    calls: int = 0  # in the rolling window (failures + reported successes)
    reason: str = ""  # why the last transition happened ("threshold", "probe_failed", "retry_after", "operator", ...)
    now: float = 0.0  # store time when the snapshot was read

    def to_dict(self) -> dict[str, object]:
        d = self.__dict__.copy()
        d["state"] = self.state.value
        return d


@dataclass(frozen=True)
class StoreResult:
    """What one atomic store operation did.

    ``transitioned`` is True only for the single caller whose call changed ``state``
    (and bumped ``generation``); that caller alone reports the transition.
    ``granted`` answers ``acquire_probe``.
    """

    snapshot: BreakerSnapshot
    transitioned: bool = False
    previous: BreakerState | None = None
    granted: bool = False
    extra: dict[str, object] = field(default_factory=dict)


class BreakerStore(Protocol):
    """Atomic operations on the authoritative breaker state.

    Every mutating operation is one atomic step (one Lua script in Redis) that reads,
    decides, writes, bumps ``generation`` on a state change and publishes exactly one
    event for exactly one transition (the Redis store publishes from inside the script).
    """

    def snapshot(self, providers: list[str]) -> dict[str, BreakerSnapshot]: ...

    def record_failure(self, provider: str, policy: BreakerPolicy, successes: int = 0) -> StoreResult:
        """Count a provider failure (plus ``successes`` not yet reported) in the window;
        CLOSED -> OPEN when failures >= threshold and failures/calls >= rate threshold.
        In HALF_OPEN/OPEN/FORCED_OPEN/DISABLED the window is not changed."""
        ...

    def record_success(self, provider: str, policy: BreakerPolicy, successes: int = 1) -> StoreResult:
        """Report successes in CLOSED (only needed while the window holds failures)."""
        ...

    def acquire_probe(self, provider: str, policy: BreakerPolicy, owner: str) -> StoreResult:
        """OPEN past ``open_until`` -> HALF_OPEN with the probe token given to ``owner``
        (granted=True, transitioned=True). HALF_OPEN with an expired token -> token to
        ``owner`` (granted=True, no transition). Otherwise granted=False. CLOSED and
        DISABLED: granted=True, no token (nothing to probe)."""
        ...

    def probe_result(self, provider: str, policy: BreakerPolicy, owner: str, ok: bool) -> StoreResult:
        """Only the token owner may report. ok: probe_successes+1, CLOSED when it reaches
        success_threshold (window cleared, reopen_count 0). Not ok: OPEN again with
        reopen_count+1 and open interval min(recovery*2**reopen_count, max) shortened
        by jitter. A stale owner (token expired or taken) changes nothing."""
        ...

    def cool_down(self, provider: str, policy: BreakerPolicy, seconds: float) -> StoreResult:
        """Provider asked us to back off (429 Retry-After): OPEN until now+seconds
        (never shortening an existing open_until), reason "retry_after", reopen_count kept."""
        ...

    def force(self, provider: str, policy: BreakerPolicy, state: BreakerState) -> StoreResult:
        """Operator: FORCED_OPEN, DISABLED, or CLOSED (reset: window, token and reopen_count cleared)."""
        ...


class OperationStore:
    """The six operations spelled once: a store implements ``snapshot`` and ``_run``
    (one atomic step of the named operation)."""

    def _run(self, op: str, provider: str, policy: BreakerPolicy, **kwargs: Any) -> StoreResult:
        raise NotImplementedError

    def record_failure(self, provider: str, policy: BreakerPolicy, successes: int = 0) -> StoreResult:
        return self._run("record_failure", provider, policy, successes=successes)

    def record_success(self, provider: str, policy: BreakerPolicy, successes: int = 1) -> StoreResult:
        return self._run("record_success", provider, policy, successes=successes)

    def acquire_probe(self, provider: str, policy: BreakerPolicy, owner: str) -> StoreResult:
        return self._run("acquire_probe", provider, policy, owner=owner)

    def probe_result(self, provider: str, policy: BreakerPolicy, owner: str, ok: bool) -> StoreResult:
        return self._run("probe_result", provider, policy, owner=owner, ok=ok)

    def cool_down(self, provider: str, policy: BreakerPolicy, seconds: float) -> StoreResult:
        return self._run("cool_down", provider, policy, seconds=seconds)

    def force(self, provider: str, policy: BreakerPolicy, state: BreakerState) -> StoreResult:
        return self._run("force", provider, policy, target=state)
