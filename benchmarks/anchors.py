"""The anchors flexitasks is compared with: pybreaker, in memory and with Redis storage.

Owns how a benchmark worker calls the provider through pybreaker, with the same load
and threshold as flexitasks (``fail_max`` = ``failure_threshold`` = 5, a reset timeout
longer than any run): the real ``OpenAIAdapter`` (OpenAI SDK over HTTP to the fake)
wrapped in ``CircuitBreaker.call``.

* ``pybreaker-memory``: one ``CircuitBreaker`` per process (what most fleets run);
* ``pybreaker-redis``: ``CircuitRedisStorage`` shared by every process under one
  namespace of this run's key prefix (the best anchor measured so far).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pybreaker
import redis

from benchmarks import KEY_PREFIX
from flexitasks.failures import ProviderFailure

MEMORY, REDIS = "pybreaker-memory", "pybreaker-redis"
NAMESPACE = f"{KEY_PREFIX}:pyb"
FAIL_MAX = 5
RESET_TIMEOUT = 600.0  # no half-open during a run


class _OpenedAt(pybreaker.CircuitBreakerListener):
    """Calls ``on_open(wall_time)`` when this process's breaker notices it is open."""

    def __init__(self, on_open: Callable[[float], None]) -> None:
        self.on_open = on_open

    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        if new_state is not None and new_state.name == pybreaker.STATE_OPEN:
            self.on_open(time.time())


def make_breaker(
    kind: str, client: redis.Redis | None = None, on_open: Callable[[float], None] | None = None,
    fail_max: int = FAIL_MAX,
) -> pybreaker.CircuitBreaker:
    listeners = [_OpenedAt(on_open)] if on_open is not None else []
    if kind == MEMORY:
        return pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=RESET_TIMEOUT, listeners=listeners)
    if kind == REDIS:
        if client is None:
            raise ValueError("pybreaker-redis needs a Redis client")
        storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=NAMESPACE)
        return pybreaker.CircuitBreaker(
            fail_max=fail_max, reset_timeout=RESET_TIMEOUT, state_storage=storage, listeners=listeners
        )
    raise ValueError(f"unknown anchor {kind!r}")


def call(
    cb: pybreaker.CircuitBreaker, complete: Callable[..., Any], request: Any, budget: float = 20.0
) -> bool:
    """One call through the breaker; True if it succeeded. Refusals and provider
    failures are the expected outcomes here, anything else is a bug and raises."""
    try:
        cb.call(complete, request, budget)
        return True
    except (pybreaker.CircuitBreakerError, ProviderFailure):
        return False


def reset_shared(client: redis.Redis) -> None:
    """Forget the shared pybreaker state (the next breaker built starts CLOSED)."""
    keys = list(client.scan_iter(match=f"{NAMESPACE}:*"))
    if keys:
        client.delete(*keys)
