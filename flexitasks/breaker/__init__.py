"""Circuit breakers shared by the fleet: the store contract, its two stores, the gate.

``store`` is the contract, ``machine`` the transition rules, ``RedisBreakerStore`` the
fleet-wide authority (one Lua script), ``MemoryBreakerStore`` the local fallback,
``events`` the channel's schema, ``mirror`` a process's view of the state (fed by
``flexitasks.sync``), ``permit`` what the router asks of a gate and ``gate`` the fleet's.
Nothing here knows about Celery, HTTP, the router, the sync thread or providers' SDKs
(pyproject's import contracts check it).
"""

from flexitasks.breaker.machine import (
    OPERATIONS,
    Admit,
    CoolDown,
    Force,
    Operation,
    ProbeResult,
    RecordFailure,
    RecordSuccess,
)
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
    "OPERATIONS",
    "Admit",
    "BreakerPolicy",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerStore",
    "BreakerStoreError",
    "CoolDown",
    "Force",
    "InvalidBreakerOperation",
    "MemoryBreakerStore",
    "Operation",
    "ProbeResult",
    "RecordFailure",
    "RecordSuccess",
    "RedisBreakerStore",
    "StoreResult",
]
