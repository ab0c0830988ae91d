"""Circuit breakers shared by the fleet: the store contract and its two stores.

``store`` is the contract, ``machine`` the transition rules, ``RedisBreakerStore`` the
fleet-wide authority (one Lua script), ``MemoryBreakerStore`` the local fallback.
Nothing here knows about Celery, HTTP or providers' SDKs.
"""

from flexitasks.breaker.machine import decide
from flexitasks.breaker.memory_store import MemoryBreakerStore
from flexitasks.breaker.redis_store import BreakerStoreError, InvalidBreakerOperation, RedisBreakerStore
from flexitasks.breaker.store import (
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    BreakerStore,
    StoreResult,
)

__all__ = [
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerStore",
    "BreakerStoreError",
    "InvalidBreakerOperation",
    "MemoryBreakerStore",
    "RedisBreakerStore",
    "StoreResult",
    "decide",
]
