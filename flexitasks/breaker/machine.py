"""The breaker's transition rules, as pure functions on a mutable record.

This module owns *what* each store operation does: given one provider's record, the
store time ``now``, the policy and a jitter draw ``rand``, it mutates the record and
says whether a transition happened, whether a probe was granted and which event (if
any) must be published. It does no I/O, reads no clock and draws no random numbers,
so the memory store is a thin locked wrapper over it and ``transition.lua`` can be
tested step for step against it. It knows nothing of Redis, Celery, HTTP or SDKs.

``transition.lua`` is a line-by-line port of these rules: change both together (the
model test in ``tests/test_breaker_store_model.py`` fails when they disagree).

Rolling window: failures and calls are counted in ``BUCKETS`` buckets of
``window / BUCKETS`` seconds, bucket index ``floor(now / (window / BUCKETS))``. A
bucket counts while ``index > current - BUCKETS``, so a failure is forgotten at the
latest ``window`` seconds after it happened (up to one bucket earlier). The record
keeps the window length its buckets were counted with: a policy with another
``window`` starts an empty window rather than mixing bucket sizes.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

from flexitasks.breaker.store import BreakerPolicy, BreakerSnapshot, BreakerState

__all__ = [
    "BUCKETS",
    "OPERATOR_STATES",
    "OPS",
    "RAND_OPS",
    "BreakerRecord",
    "Decision",
    "Op",
    "acquire_probe",
    "bucket_of",
    "check_args",
    "cool_down",
    "decide",
    "force",
    "interval",
    "probe_result",
    "record_failure",
    "record_success",
    "snapshot_of",
    "validate_policy",
    "window_counts",
]

Op = Literal["record_failure", "record_success", "acquire_probe", "probe_result", "cool_down", "force"]
OPS: tuple[str, ...] = (
    "record_failure",
    "record_success",
    "acquire_probe",
    "probe_result",
    "cool_down",
    "force",
)
# Operations that may compute an open interval and so consume exactly one jitter draw
# per call (whether or not it is used): both stores draw for these and only these, so
# two stores seeded alike stay in step.
RAND_OPS: frozenset[str] = frozenset({"record_failure", "probe_result"})
OPERATOR_STATES: frozenset[BreakerState] = frozenset(
    {BreakerState.FORCED_OPEN, BreakerState.DISABLED, BreakerState.CLOSED}
)
BUCKETS = 60
# 2**n is capped so that a provider failing probes for ever cannot overflow the
# exponent; recovery * 2**1000 is above any sane max_recovery_timeout already.
_EXPONENT_CAP = 1000


@dataclass
class BreakerRecord:
    """Everything a store keeps for one provider (the Redis hash + window, in memory)."""

    provider: str
    state: BreakerState = BreakerState.CLOSED
    generation: int = 0
    open_until: float = 0.0
    reopen_count: int = 0
    probe_owner: str | None = None
    probe_until: float = 0.0
    probe_successes: int = 0
    reason: str = ""
    window_length: float = 0.0  # the policy window the buckets were counted with; 0: empty
    buckets: dict[int, list[int]] = field(default_factory=dict)  # index -> [failures, calls]


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


def check_args(
    op: str,
    *,
    successes: int = 0,
    owner: str | None = None,
    ok: bool | None = None,
    seconds: float | None = None,
    target: BreakerState | str | None = None,
) -> dict[str, object]:
    """Validate and normalise one operation's arguments; return only those it uses.

    The Redis store calls this before building ARGV so a malformed call is a Python
    ``ValueError`` naming the argument, never a script error.
    """
    if op not in OPS:
        raise ValueError(f"unknown breaker operation {op!r} (expected one of {', '.join(OPS)})")
    if op in ("record_failure", "record_success"):
        return {"successes": _int("successes", successes, 0)}
    if op in ("acquire_probe", "probe_result"):
        if not isinstance(owner, str) or not owner:
            raise ValueError(f"owner must be a non-empty str, got {owner!r}")
        if op == "acquire_probe":
            return {"owner": owner}
        if not isinstance(ok, bool):
            raise ValueError(f"ok must be a bool, got {ok!r}")
        return {"owner": owner, "ok": ok}
    if op == "cool_down":
        s = _finite("seconds", seconds)
        if s < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        return {"seconds": s}
    # force
    try:
        state = BreakerState(target)
    except ValueError:
        raise ValueError(f"force target must be a BreakerState, got {target!r}") from None
    if state not in OPERATOR_STATES:
        allowed = ", ".join(sorted(s.value for s in OPERATOR_STATES))
        raise ValueError(f"force target must be one of {allowed}, got {state.value!r}")
    return {"target": state}


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
    if record.window_length != policy.window:
        record.buckets.clear()
        record.window_length = policy.window
    current = bucket_of(now, policy.window)
    for index in [i for i in record.buckets if i <= current - BUCKETS]:
        del record.buckets[index]
    counters = record.buckets.setdefault(current, [0, 0])
    counters[0] += failures
    counters[1] += calls


def _window_clear(record: BreakerRecord) -> None:
    record.buckets.clear()
    record.window_length = 0.0


def _clear_token(record: BreakerRecord) -> None:
    record.probe_owner = None
    record.probe_until = 0.0
    record.probe_successes = 0


def snapshot_of(record: BreakerRecord, now: float) -> BreakerSnapshot:
    failures, calls = window_counts(record, now)
    return BreakerSnapshot(
        provider=record.provider,
        state=record.state,
        generation=record.generation,
        open_until=record.open_until,
        reopen_count=record.reopen_count,
        probe_owner=record.probe_owner,
        probe_until=record.probe_until,
        probe_successes=record.probe_successes,
        failures=failures,
        calls=calls,
        reason=record.reason,
        now=now,
    )


def _transition(
    record: BreakerRecord, to: BreakerState, reason: str, now: float, *, granted: bool = False
) -> Decision:
    """Move to ``to``, bump generation, and build the single event announcing it."""
    previous = record.state
    record.state = to
    record.generation += 1
    record.reason = reason
    event: dict[str, object] = {
        "v": 1,
        "type": "transition",
        "provider": record.provider,
        "state": to.value,
        "previous": previous.value,
        "generation": record.generation,
        "open_until": record.open_until,
        "probe_until": record.probe_until,
        "probe_owner": record.probe_owner,
        "reason": reason,
        "at": now,
    }
    return Decision(transitioned=True, previous=previous, granted=granted, event=event)


# ---------------------------------------------------------------- operations


def record_failure(
    record: BreakerRecord, policy: BreakerPolicy, now: float, rand: float, successes: int = 0
) -> Decision:
    if record.state is not BreakerState.CLOSED:
        return Decision()
    _window_add(record, policy, now, 1, 1 + successes)
    failures, calls = window_counts(record, now)
    if failures >= policy.failure_threshold and failures / calls >= policy.failure_rate_threshold:
        record.reopen_count = 0
        record.open_until = now + interval(policy, 0, rand)
        _clear_token(record)
        return _transition(record, BreakerState.OPEN, "threshold", now)
    if failures > 1:
        return Decision()  # only the first failure of a window is news to the fleet (see events.py)
    return Decision(
        event={
            "v": 1,
            "type": "failure",
            "provider": record.provider,
            "generation": record.generation,
            "failures": failures,
            "calls": calls,
            "at": now,
        }
    )


def record_success(record: BreakerRecord, policy: BreakerPolicy, now: float, successes: int = 1) -> Decision:
    if record.state is BreakerState.CLOSED:
        _window_add(record, policy, now, 0, successes)
    return Decision()


def acquire_probe(record: BreakerRecord, policy: BreakerPolicy, now: float, owner: str) -> Decision:
    state = record.state
    if state in (BreakerState.CLOSED, BreakerState.DISABLED):
        return Decision(granted=True)
    if state is BreakerState.OPEN:
        if now < record.open_until:
            return Decision()
        record.probe_owner = owner
        record.probe_until = now + policy.probe_ttl
        record.probe_successes = 0
        return _transition(record, BreakerState.HALF_OPEN, "recovery_elapsed", now, granted=True)
    if state is BreakerState.HALF_OPEN:
        if record.probe_owner is None or now >= record.probe_until:
            record.probe_owner = owner
            record.probe_until = now + policy.probe_ttl
            return Decision(granted=True)
        return Decision(granted=record.probe_owner == owner)
    return Decision()  # FORCED_OPEN


def probe_result(
    record: BreakerRecord, policy: BreakerPolicy, now: float, rand: float, owner: str, ok: bool
) -> Decision:
    if record.state is not BreakerState.HALF_OPEN or record.probe_owner != owner or now >= record.probe_until:
        return Decision()
    if ok:
        record.probe_successes += 1
        if record.probe_successes < policy.success_threshold:
            record.probe_owner = None  # release: the next probe may go
            record.probe_until = 0.0
            return Decision()
        _clear_token(record)
        _window_clear(record)
        record.reopen_count = 0
        return _transition(record, BreakerState.CLOSED, "probe_succeeded", now)
    record.reopen_count += 1
    record.open_until = now + interval(policy, record.reopen_count, rand)
    _clear_token(record)
    return _transition(record, BreakerState.OPEN, "probe_failed", now)


def cool_down(record: BreakerRecord, policy: BreakerPolicy, now: float, seconds: float) -> Decision:
    state = record.state
    until = now + seconds
    if state in (BreakerState.CLOSED, BreakerState.HALF_OPEN):
        record.open_until = until
        _clear_token(record)
        return _transition(record, BreakerState.OPEN, "retry_after", now)
    if state is BreakerState.OPEN:
        record.open_until = max(record.open_until, until)
    return Decision()


def force(record: BreakerRecord, policy: BreakerPolicy, now: float, target: BreakerState) -> Decision:
    if target not in OPERATOR_STATES:
        raise ValueError(f"force target must be an operator state, got {target!r}")
    _clear_token(record)
    if target is BreakerState.CLOSED:
        _window_clear(record)
        record.reopen_count = 0
    if record.state is target:
        return Decision()
    return _transition(record, target, "operator", now)


def decide(
    record: BreakerRecord,
    op: str,
    now: float,
    policy: BreakerPolicy,
    rand: float = 0.0,
    *,
    successes: int = 0,
    owner: str | None = None,
    ok: bool | None = None,
    seconds: float | None = None,
    target: BreakerState | str | None = None,
) -> Decision:
    """Apply operation ``op`` to ``record`` at store time ``now``: the one entry point.

    ``rand`` is the jitter draw in [0, 1) (used by the ops in ``RAND_OPS``). Raises
    ``ValueError`` for an unknown op, a bad argument or a bad policy, before mutating.
    """
    validate_policy(policy)
    args = check_args(op, successes=successes, owner=owner, ok=ok, seconds=seconds, target=target)
    now = _finite("now", now)
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand!r}")
    if op == "record_failure":
        return record_failure(record, policy, now, rand, args["successes"])  # type: ignore[arg-type]
    if op == "record_success":
        return record_success(record, policy, now, args["successes"])  # type: ignore[arg-type]
    if op == "acquire_probe":
        return acquire_probe(record, policy, now, args["owner"])  # type: ignore[arg-type]
    if op == "probe_result":
        return probe_result(record, policy, now, rand, args["owner"], args["ok"])  # type: ignore[arg-type]
    if op == "cool_down":
        return cool_down(record, policy, now, args["seconds"])  # type: ignore[arg-type]
    return force(record, policy, now, args["target"])  # type: ignore[arg-type]
