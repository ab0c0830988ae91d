"""GCRA (the generic cell rate algorithm): a leaky bucket kept as one number.

Used for both rpm (cost 1 per request, bucket ``burst`` requests deep) and tpm (cost =
tokens, bucket one minute of tokens deep). The state is the theoretical arrival time
``tat``: the moment the bucket would be empty again. Pure arithmetic; ``limit.lua``
spells the same expressions in the same order, so both give bit-identical floats
(``tests/test_limits_model.py`` compares them). No clock, no I/O.
"""

from __future__ import annotations

__all__ = ["admit", "level", "settle"]


def admit(tat: float, now: float, per_minute: float, depth: float, cost: float) -> tuple[bool, float, float]:
    """``(allowed, new_tat, wait)``: may ``cost`` units go now under ``per_minute`` with a
    bucket ``depth`` units deep? ``new_tat`` is the state if they go; ``wait`` the seconds
    until they could (0 when allowed)."""
    interval = 60.0 / per_minute
    new_tat = max(tat, now) + cost * interval
    over = new_tat - now - depth * interval
    if over <= 0:
        return True, new_tat, 0.0
    return False, new_tat, over


def settle(tat: float, per_minute: float, delta: float) -> float:
    """Correct a reservation by ``delta`` units (real - reserved): a refund moves ``tat``
    back, extra usage forward, as if the real amount had been taken at admission."""
    return tat + delta * (60.0 / per_minute)


def level(tat: float, now: float, per_minute: float) -> float:
    """Units in the bucket at ``now`` (0 = all of the depth is free)."""
    return (max(tat, now) - now) / (60.0 / per_minute)
