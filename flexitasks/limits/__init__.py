"""Fleet-wide rate limits, in-flight caps and weighted balancing across providers.

``gcra`` and ``leases`` are the algorithms, ``machine`` the rules of one atomic check
and finish, ``backend`` the contract, ``RedisLimiterBackend`` the fleet-wide authority
(``limit.lua``, Redis ``TIME`` as the clock), ``MemoryLimiterBackend`` the reference
model and local fallback, ``limiter`` the router's view, ``balance`` the order among
providers of equal priority. Nothing here knows about Celery, HTTP or SDKs.
"""

from flexitasks.limits.backend import LimiterBackend, LimiterError
from flexitasks.limits.machine import LimitView, Verdict
from flexitasks.limits.memory_backend import MemoryLimiterBackend
from flexitasks.limits.policy import LIMITS, LimitPolicy, policy_of
from flexitasks.limits.redis_backend import RedisLimiterBackend

__all__ = [
    "LIMITS",
    "LimitPolicy",
    "LimitView",
    "LimiterBackend",
    "LimiterError",
    "MemoryLimiterBackend",
    "RedisLimiterBackend",
    "Verdict",
    "policy_of",
]
