"""The limiter's rules: one provider's record, a check and a finish, all pure.

This module owns *what* a check and a finish do to one provider's record at store
time ``now``: rpm (GCRA, ``burst`` deep), tpm (GCRA over tokens, a minute deep,
reserved at admission and settled with the real usage after the call) and in-flight
leases. A check is all or nothing: if any limit refuses, nothing is taken, unless the
caller may wait ``max_wait`` seconds and only rpm/tpm refuse: then it books the next
free slot (taken now, used after the wait), so requests that have to wait are served in
the order they asked, not in a stampede. It reads no clock and does no I/O, so the
memory backend is a locked wrapper around it and ``limit.lua`` is tested step for step
against it (``tests/test_limits_model.py``). Change both together.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flexitasks.limits import gcra, leases
from flexitasks.limits.policy import LIMITS, LimitPolicy

__all__ = ["LimitRecord", "LimitView", "Verdict", "check", "finish", "view_of"]


@dataclass
class LimitRecord:
    """Everything a backend keeps for one provider (Redis: a hash and a sorted set)."""

    rpm_tat: float = 0.0
    tpm_tat: float = 0.0
    leases: dict[str, float] = field(default_factory=dict)  # lease id -> expiry
    skips: dict[str, int] = field(default_factory=dict)  # refusals so far, by the limit reported


@dataclass(frozen=True)
class LimitView:
    """A provider's limits as the store saw them at ``now`` (after the step)."""

    now: float
    rpm_tat: float = 0.0
    tpm_tat: float = 0.0
    in_flight: int = 0
    skips: dict[str, int] = field(default_factory=dict)

    def used(self, policy: LimitPolicy) -> dict[str, float]:
        """Per active limit: requests in rpm's bucket, tokens in tpm's, live leases."""
        out: dict[str, float] = {}
        if policy.rpm is not None:
            out["rpm"] = gcra.level(self.rpm_tat, self.now, policy.rpm)
        if policy.tpm is not None:
            out["tpm"] = gcra.level(self.tpm_tat, self.now, policy.tpm)
        if policy.max_in_flight is not None:
            out["in_flight"] = float(self.in_flight)
        return out

    def headroom(self, policy: LimitPolicy) -> float:
        """The tightest limit's free share, 0..1 (1 with no limits): what balancing prefers."""
        used = self.used(policy)
        free = [1.0 - used[name] / policy.capacity(name) for name in used]
        return min(1.0, max(0.0, min(free, default=1.0)))


@dataclass(frozen=True)
class Verdict:
    """What one check decided. ``waits``: seconds until each refusing limit would admit."""

    allowed: bool
    reserved: int  # tokens taken from tpm (the estimate, capped at one minute's worth)
    waits: dict[str, float]
    view: LimitView

    booked: bool = False  # not allowed now, but the slot after ``retry_after`` is this call's

    @property
    def refused(self) -> tuple[str, ...]:
        return tuple(name for name in LIMITS if name in self.waits)

    @property
    def retry_after(self) -> float:
        """Seconds until every refusing limit would admit (leases: their latest expiry)."""
        return max(self.waits.values(), default=0.0)


def view_of(record: LimitRecord, now: float) -> LimitView:
    return LimitView(now, record.rpm_tat, record.tpm_tat, leases.live(record.leases, now), dict(record.skips))


def check(
    record: LimitRecord, policy: LimitPolicy, now: float, tokens: int, lease: str, max_wait: float = 0.0
) -> Verdict:
    """Admit one call of about ``tokens`` tokens holding lease ``lease``; or book the slot
    after a wait of at most ``max_wait`` (rpm/tpm only: a lease cannot start later); or
    take nothing."""
    leases.prune(record.leases, now)
    waits: dict[str, float] = {}
    rpm_tat, tpm_tat, reserved = record.rpm_tat, record.tpm_tat, 0
    if policy.rpm is not None:
        ok, rpm_tat, wait = gcra.admit(record.rpm_tat, now, policy.rpm, policy.burst, 1.0)
        if not ok:
            waits["rpm"] = wait
    if policy.tpm is not None:
        reserved = min(tokens, policy.tpm)
        ok, tpm_tat, wait = gcra.admit(record.tpm_tat, now, policy.tpm, policy.tpm, reserved)
        if not ok:
            waits["tpm"] = wait
    if policy.max_in_flight is not None:
        ok, wait = leases.admit(record.leases, now, policy.max_in_flight)
        if not ok:
            waits["in_flight"] = wait
    booked = bool(waits) and policy.max_in_flight is None and max(waits.values()) <= max_wait
    if waits and not booked:  # counted where the exporter can see it, under the limit the attempt names
        first = next(name for name in LIMITS if name in waits)
        record.skips[first] = record.skips.get(first, 0) + 1
    if not waits or booked:
        record.rpm_tat, record.tpm_tat = rpm_tat, tpm_tat
        if policy.max_in_flight is not None:
            record.leases[lease] = now + policy.lease_ttl
    return Verdict(allowed=not waits, reserved=reserved if not waits or booked else 0, waits=waits,
                   view=view_of(record, now), booked=booked)


def finish(
    record: LimitRecord, policy: LimitPolicy, now: float, lease: str, reserved: int, actual: int | None
) -> LimitView:
    """The call is over: release its lease and settle tpm with the real usage (``actual``
    None: unknown, the reservation stands)."""
    leases.prune(record.leases, now)
    record.leases.pop(lease, None)
    if policy.tpm is not None and actual is not None:
        record.tpm_tat = gcra.settle(record.tpm_tat, policy.tpm, actual - reserved)
    return view_of(record, now)
