"""The fleet's limits as Redis holds them, for ``flexitasks status`` and the exporter.

Read-only (one round trip, writes nothing); takes the settings it reads with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flexitasks.limits.policy import policy_of
from flexitasks.limits.redis_backend import RedisLimiterBackend

if TYPE_CHECKING:
    import redis

    from flexitasks.config import Settings

__all__ = ["fleet_limits"]


def fleet_limits(settings: Settings, client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Each limited provider's limits as Redis holds them (one round trip, writes nothing):
    ``{provider: {limit: {"used", "capacity", "headroom", "per_minute"?}, "skips": {limit: n}}}``.
    rpm's capacity is its burst (requests that may start at once), tpm's a minute of tokens."""
    policies = {p.name: policy_of(p) for p in settings.providers}
    limited = [name for name, policy in policies.items() if policy.limited]
    views = RedisLimiterBackend(client, settings.sync.key_prefix).peek(limited)
    out: dict[str, dict[str, Any]] = {}
    for name in limited:
        policy, view = policies[name], views[name]
        entry: dict[str, Any] = {}
        for limit, used in view.used(policy).items():
            capacity = policy.capacity(limit)
            entry[limit] = {"used": round(used, 3), "capacity": capacity, "headroom": round(capacity - used, 3)}
        if policy.rpm is not None:
            entry["rpm"]["per_minute"] = policy.rpm
        entry["skips"] = dict(view.skips)
        out[name] = entry
    return out
