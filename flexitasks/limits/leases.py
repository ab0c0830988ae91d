"""In-flight leases: a call holds one from admission to its end, or until it expires.

Leases are ``{lease_id: expiry}``; a lease whose expiry is ``<= now`` is gone (its
holder died or hung past any timeout). Pure; ``limit.lua`` keeps the same map as a
sorted set scored by expiry. No clock, no I/O.
"""

from __future__ import annotations

__all__ = ["admit", "live", "prune"]


def prune(leases: dict[str, float], now: float) -> None:
    for lease in [k for k, expiry in leases.items() if expiry <= now]:
        del leases[lease]


def live(leases: dict[str, float], now: float) -> int:
    return sum(1 for expiry in leases.values() if expiry > now)


def admit(leases: dict[str, float], now: float, cap: int) -> tuple[bool, float]:
    """``(allowed, wait)`` for one more lease (call ``prune`` first). ``wait`` is the
    time until the earliest live lease expires: the latest a slot is sure to free."""
    if len(leases) < cap:
        return True, 0.0
    return False, min(leases.values()) - now
