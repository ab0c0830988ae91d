"""The breaker's transition rules: one frozen operation object per store operation.

This module owns *what* each store operation does. An operation (``RecordFailure``,
``RecordSuccess``, ``Admit``, ``ProbeResult``, ``CoolDown``, ``Force``) carries its
arguments, checks them (``validate``), applies its rule to one provider's record at
the store time ``now`` with a jitter draw ``rand`` (``apply``: mutates the record, says
whether a transition happened, whether the call is admitted and which event to
publish) and spells its arguments for the Lua script (``script_args``). No I/O, no
clock, no random draws: the memory store is a thin locked wrapper over it and
``transition.lua`` is tested step for step against it. Knows nothing of Redis, Celery,
HTTP or SDKs.

``transition.lua`` is a line-by-line port of these rules: change both together (the
model test in ``tests/test_breaker_store_model.py`` fails when they disagree).

Rolling window: failures and calls are counted in ``BUCKETS`` buckets of
``window / BUCKETS`` seconds, bucket index ``floor(now / (window / BUCKETS))``. A
bucket counts while ``index > current - BUCKETS``, so a failure is forgotten at the
latest ``window`` seconds after it happened (up to one bucket earlier). The record
keeps the window length its buckets were counted with: a policy with another
``window`` (a rolling deploy that changes it) adds to the counts under way with their
bucket size rather than erasing them; the new length applies from the next empty window.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from flexitasks.breaker.schema import BreakerSnapshot, BreakerState

__all__ = [
    "BUCKETS",
    "OPERATIONS",
    "OPERATOR_STATES",
    "Admit",
    "BreakerPolicy",
    "BreakerRecord",
    "CoolDown",
    "Decision",
    "Force",
    "Operation",
    "ProbeResult",
    "RecordFailure",
    "RecordSuccess",
    "bucket_of",
    "interval",
    "snapshot_of",
    "validate_call",
    "validate_policy",
    "window_counts",
]

OPERATOR_STATES: frozenset[BreakerState] = frozenset(
    {BreakerState.FORCED_OPEN, BreakerState.DISABLED, BreakerState.CLOSED}
)
BUCKETS = 60
# 2**n is capped so that a provider failing probes for ever cannot overflow the
# exponent; recovery * 2**1000 is above any sane max_recovery_timeout already.
_EXPONENT_CAP = 1000


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


@dataclass
class BreakerRecord:
    """Everything a store keeps for one provider: the persisted part of the snapshot
    (its ``failures``/``calls``/``now`` are filled in when read) and the window."""

    snap: BreakerSnapshot
    window_length: float = 0.0  # the policy window the buckets were counted with; 0: empty
    buckets: dict[int, list[int]] = field(default_factory=dict)  # index -> [failures, calls]

    @classmethod
    def new(cls, provider: str) -> BreakerRecord:
        return cls(BreakerSnapshot(provider=provider))

    def set(self, **changes: Any) -> None:
        self.snap = dataclasses.replace(self.snap, **changes)


@dataclass(frozen=True)
class Decision:
    """What one operation did to a record; the store turns it into a StoreResult."""

    transitioned: bool = False
    previous: BreakerState | None = None  # the state left, only when transitioned
    granted: bool = False
    event: dict[str, object] | None = None  # to publish, already complete


# ---------------------------------------------------------------- validation


def _finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _owner(owner: object) -> None:
    if not isinstance(owner, str) or not owner:
        raise ValueError(f"owner must be a non-empty str, got {owner!r}")


@functools.lru_cache(maxsize=128)
def validate_policy(policy: BreakerPolicy) -> BreakerPolicy:
    """Reject a policy the rules cannot honour (cached: policies are frozen and few).

    Both stores call this before touching state, so a bad config fails the same way
    (``ValueError``) whether Redis is up or not.
    """
    _int("failure_threshold", policy.failure_threshold, 1)
    _int("success_threshold", policy.success_threshold, 1)
    checks = {
        "failure_rate_threshold": (policy.failure_rate_threshold, 0.0, 1.0),
        "window": (policy.window, 0.0, math.inf),
        "recovery_timeout": (policy.recovery_timeout, 0.0, math.inf),
        "max_recovery_timeout": (policy.max_recovery_timeout, 0.0, math.inf),
        "jitter": (policy.jitter, 0.0, 1.0),
        "probe_ttl": (policy.probe_ttl, 0.0, math.inf),
    }
    for name, (value, lo, hi) in checks.items():
        v = _finite(f"policy.{name}", value)
        if not lo <= v <= hi:
            raise ValueError(f"policy.{name} must be in [{lo}, {hi}], got {value!r}")
    if policy.window <= 0 or policy.probe_ttl <= 0:
        raise ValueError("policy.window and policy.probe_ttl must be > 0")
    return policy


def validate_call(policy: BreakerPolicy, now: object, rand: object) -> float:
    """The parts of a call every operation shares: policy, store time, jitter draw."""
    validate_policy(policy)
    if isinstance(rand, bool) or not isinstance(rand, (int, float)) or not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand!r}")
    return _finite("now", now)


# ---------------------------------------------------------------- helpers


def interval(policy: BreakerPolicy, reopen_count: int, rand: float) -> float:
    """Open interval after ``reopen_count`` consecutive re-opens, shortened by jitter.

    Jitter only ever shortens the interval so the fleet's probes spread out without
    exceeding ``max_recovery_timeout``.
    """
    n = min(reopen_count, _EXPONENT_CAP)
    return min(policy.recovery_timeout * 2.0**n, policy.max_recovery_timeout) * (1.0 - policy.jitter * rand)


def bucket_of(now: float, window: float) -> int:
    return math.floor(now / (window / BUCKETS))


def window_counts(record: BreakerRecord, now: float) -> tuple[int, int]:
    """(failures, calls) in the rolling window at ``now``, without pruning."""
    if record.window_length <= 0:
        return 0, 0
    oldest = bucket_of(now, record.window_length) - BUCKETS
    failures = calls = 0
    for index, (f, c) in record.buckets.items():
        if index > oldest:
            failures += f
            calls += c
    return failures, calls


def _window_add(record: BreakerRecord, policy: BreakerPolicy, now: float, failures: int, calls: int) -> None:
    if record.window_length <= 0:
        record.buckets.clear()
        record.window_length = policy.window
    current = bucket_of(now, record.window_length)
    for index in [i for i in record.buckets if i <= current - BUCKETS]:
        del record.buckets[index]
    counters = record.buckets.setdefault(current, [0, 0])
    counters[0] += failures
    counters[1] += calls


def _window_clear(record: BreakerRecord) -> None:
    record.buckets.clear()
    record.window_length = 0.0


_NO_TOKEN: dict[str, Any] = {"probe_owner": None, "probe_until": 0.0, "probe_successes": 0}


def snapshot_of(record: BreakerRecord, now: float) -> BreakerSnapshot:
    failures, calls = window_counts(record, now)
    return dataclasses.replace(record.snap, failures=failures, calls=calls, now=now)


def _transition(
    record: BreakerRecord, to: BreakerState, reason: str, now: float, *, granted: bool = False
) -> Decision:
    """Move to ``to``, bump generation, and build the single event announcing it."""
    previous = record.snap.state
    record.set(state=to, generation=record.snap.generation + 1, reason=reason)
    event = snapshot_of(record, now).to_event(previous)
    return Decision(transitioned=True, previous=previous, granted=granted, event=event)


# ---------------------------------------------------------------- operations


@dataclass(frozen=True)
class Operation:
    """One store operation: its arguments, their check, its rule, its script arguments."""

    name: ClassVar[str]
    draws_jitter: ClassVar[bool] = False
    """Operations that may compute an open interval consume exactly one jitter draw per
    call (whether or not it is used): both stores draw for these and only these, so two
    stores seeded alike stay in step."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad argument (before anything is touched)."""

    def apply(self, record: BreakerRecord, policy: BreakerPolicy, now: float, rand: float) -> Decision:
        raise NotImplementedError

    def script_args(self) -> tuple[str, str]:
        """ARGV[14], ARGV[15] of ``transition.lua`` ('' when unused)."""
        raise NotImplementedError


@dataclass(frozen=True)
class RecordFailure(Operation):
    """Count a provider failure (plus ``successes`` not yet reported) in the window;
    CLOSED -> OPEN when failures >= threshold and failures/calls >= rate threshold.
    In any other state the window is not changed. Only the first failure of a window is
    published (news to the fleet, see ``FailureEvent``)."""

    successes: int = 0
    name: ClassVar[str] = "record_failure"
    draws_jitter: ClassVar[bool] = True

    def validate(self) -> None:
        _int("successes", self.successes, 0)

    def apply(self, record: BreakerRecord, policy: BreakerPolicy, now: float, rand: float) -> Decision:
        if record.snap.state is not BreakerState.CLOSED:
            return Decision()
        _window_add(record, policy, now, 1, 1 + self.successes)
        failures, calls = window_counts(record, now)
        if failures >= policy.failure_threshold and failures / calls >= policy.failure_rate_threshold:
            record.set(reopen_count=0, open_until=now + interval(policy, 0, rand), **_NO_TOKEN)
            return _transition(record, BreakerState.OPEN, "threshold", now)
        if failures > 1:
            return Decision()
        return Decision(event=snapshot_of(record, now).to_failure_event())

    def script_args(self) -> tuple[str, str]:
        return str(self.successes), ""


@dataclass(frozen=True)
class RecordSuccess(Operation):
    """Report successes in CLOSED (only needed while the window holds failures)."""

    successes: int = 1
    name: ClassVar[str] = "record_success"

    def validate(self) -> None:
        _int("successes", self.successes, 0)

    def apply(self, record: BreakerRecord, policy: BreakerPolicy, now: float, rand: float) -> Decision:
        if record.snap.state is BreakerState.CLOSED:
            _window_add(record, policy, now, 0, self.successes)
        return Decision()

    def script_args(self) -> tuple[str, str]:
        return str(self.successes), ""


@dataclass(frozen=True)
class Admit(Operation):
    """May ``owner``'s call go now? CLOSED, DISABLED: yes (no token: nothing to probe).
    OPEN past ``open_until``: -> HALF_OPEN with the probe token to ``owner`` (granted,
    transitioned). HALF_OPEN with a free or expired token: the token to ``owner``
    (granted, no transition); held by ``owner``: granted. Otherwise not granted.
    ``owner`` names one call (one permit), so one probe means one call."""

    owner: str
    name: ClassVar[str] = "admit"

    def validate(self) -> None:
        _owner(self.owner)

    def apply(self, record: BreakerRecord, policy: BreakerPolicy, now: float, rand: float) -> Decision:
        s = record.snap
        if s.state in (BreakerState.CLOSED, BreakerState.DISABLED):
            return Decision(granted=True)
        if s.state is BreakerState.OPEN:
            if now < s.open_until:
                return Decision()
            record.set(probe_owner=self.owner, probe_until=now + policy.probe_ttl, probe_successes=0)
            return _transition(record, BreakerState.HALF_OPEN, "recovery_elapsed", now, granted=True)
        if s.state is BreakerState.HALF_OPEN:
            if s.probe_owner is None or now >= s.probe_until:
                record.set(probe_owner=self.owner, probe_until=now + policy.probe_ttl)
                return Decision(granted=True)
            return Decision(granted=s.probe_owner == self.owner)
        return Decision()  # FORCED_OPEN

    def script_args(self) -> tuple[str, str]:
        return self.owner, ""


@dataclass(frozen=True)
class ProbeResult(Operation):
    """Only the token owner may report. ok: probe_successes+1, CLOSED when it reaches
    success_threshold (window cleared, reopen_count 0), else the token is released for
    the next probe. Not ok: OPEN again with reopen_count+1 and the open interval
    min(recovery*2**reopen_count, max) shortened by jitter. A stale owner (token expired
    or taken) changes nothing."""

    owner: str
    ok: bool
    name: ClassVar[str] = "probe_result"
    draws_jitter: ClassVar[bool] = True

    def validate(self) -> None:
        _owner(self.owner)
        if not isinstance(self.ok, bool):
            raise ValueError(f"ok must be a bool, got {self.ok!r}")

    def apply(self, record: BreakerRecord, policy: BreakerPolicy, now: float, rand: float) -> Decision:
        s = record.snap
        if s.state is not BreakerState.HALF_OPEN or s.probe_owner != self.owner or now >= s.probe_until:
            return Decision()
        if not self.ok:
            reopen = s.reopen_count + 1
            record.set(reopen_count=reopen, open_until=now + interval(policy, reopen, rand), **_NO_TOKEN)
            return _transition(record, BreakerState.OPEN, "probe_failed", now)
        if s.probe_successes + 1 < policy.success_threshold:
            record.set(probe_successes=s.probe_successes + 1, probe_owner=None, probe_until=0.0)
            return Decision()
        record.set(reopen_count=0, **_NO_TOKEN)
        _window_clear(record)
        return _transition(record, BreakerState.CLOSED, "probe_succeeded", now)

    def script_args(self) -> tuple[str, str]:
        return self.owner, "1" if self.ok else "0"


@dataclass(frozen=True)
class CoolDown(Operation):
    """The provider asked us to back off (Retry-After): OPEN until now+seconds (never
    shortening an existing open_until), reason "retry_after", reopen_count kept. One that
    extends an open interval is a transition of its own (OPEN -> OPEN, reason
    "retry_after_extended"), so every process learns the new end and why."""

    seconds: float
    name: ClassVar[str] = "cool_down"

    def validate(self) -> None:
        if _finite("seconds", self.seconds) < 0:
            raise ValueError(f"seconds must be >= 0, got {self.seconds!r}")

    def apply(self, record: BreakerRecord, policy: BreakerPolicy, now: float, rand: float) -> Decision:
        s = record.snap
        until = now + self.seconds
        if s.state in (BreakerState.CLOSED, BreakerState.HALF_OPEN):
            record.set(open_until=until, **_NO_TOKEN)
            return _transition(record, BreakerState.OPEN, "retry_after", now)
        if s.state is BreakerState.OPEN and until > s.open_until:
            record.set(open_until=until)
            return _transition(record, BreakerState.OPEN, "retry_after_extended", now)
        return Decision()

    def script_args(self) -> tuple[str, str]:
        return repr(float(self.seconds)), ""


@dataclass(frozen=True)
class Force(Operation):
    """Operator: FORCED_OPEN, DISABLED, or CLOSED (reset: window, token and reopen_count cleared)."""

    target: BreakerState
    name: ClassVar[str] = "force"

    def validate(self) -> None:
        try:
            state = BreakerState(self.target)
        except ValueError:
            raise ValueError(f"force target must be a BreakerState, got {self.target!r}") from None
        if state not in OPERATOR_STATES:
            allowed = ", ".join(sorted(s.value for s in OPERATOR_STATES))
            raise ValueError(f"force target must be one of {allowed}, got {state.value!r}")

    def apply(self, record: BreakerRecord, policy: BreakerPolicy, now: float, rand: float) -> Decision:
        target = BreakerState(self.target)
        record.set(**_NO_TOKEN)
        if target is BreakerState.CLOSED:
            _window_clear(record)
            record.set(reopen_count=0)
        if record.snap.state is target:
            return Decision()
        return _transition(record, target, "operator", now)

    def script_args(self) -> tuple[str, str]:
        return BreakerState(self.target).value, ""


OPERATIONS: tuple[type[Operation], ...] = (RecordFailure, RecordSuccess, Admit, ProbeResult, CoolDown, Force)
