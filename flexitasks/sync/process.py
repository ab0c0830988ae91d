"""Wires one process's breaker sync: Redis client, store, mirror, subscriber, gate.

``process_gate()`` is what the runtime calls in any process that routes calls (prefork
child, worker main process, a producer running tasks eagerly); it builds everything
once per pid, so nothing made before a fork is used after it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis

from flexitasks.breaker.gate import FleetGate, TransitionListener
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import StoreResult
from flexitasks.celery_app import settings
from flexitasks.sync.mirror import Mirror
from flexitasks.sync.subscriber import Subscriber

log = logging.getLogger(__name__)


@dataclass
class ProcessSync:
    client: redis.Redis
    store: RedisBreakerStore
    mirror: Mirror
    gate: FleetGate
    subscriber: Subscriber
    pid: int


_lock = threading.Lock()
_current: ProcessSync | None = None
transition_listeners: list[TransitionListener] = []
node_name: str | None = None  # set by the worker before forking its children
role: str = "process"


def _broadcast(result: StoreResult) -> None:
    for listener in transition_listeners:
        try:
            listener(result)
        except Exception:
            log.exception("transition listener failed")


def build(wait: float = 1.0, on_transition: Callable[[StoreResult], None] = _broadcast) -> ProcessSync:
    s = settings.sync
    client = redis.Redis.from_url(
        s.redis_url, socket_timeout=s.socket_timeout, socket_connect_timeout=s.socket_timeout
    )
    names = [p.name for p in settings.providers]
    store = RedisBreakerStore(client, key_prefix=s.key_prefix, channel=s.channel)
    mirror = Mirror(names)
    policies = {p.name: settings.breaker_policy(p) for p in settings.providers}
    gate = FleetGate(store, mirror, policies, on_transition=on_transition)
    sub = Subscriber(
        client,
        store,
        mirror,
        names,
        channel=s.channel,
        key_prefix=s.key_prefix,
        resync_interval=s.resync_interval,
        heartbeat_interval=s.heartbeat_interval,
        set_degraded=gate.set_degraded,
        role=role,
        node=node_name,
    )
    sub.start(wait=wait)
    return ProcessSync(client, store, mirror, gate, sub, os.getpid())


def current(wait: float = 1.0) -> ProcessSync:
    global _current
    if _current is not None and _current.pid == os.getpid():
        return _current
    with _lock:
        if _current is None or _current.pid != os.getpid():
            _current = build(wait=wait)
        return _current


def existing() -> ProcessSync | None:
    """This process's sync if it has been started (never a parent's, after a fork)."""
    return _current if _current is not None and _current.pid == os.getpid() else None


def process_gate() -> FleetGate:
    return current().gate


def reset_after_fork() -> None:
    """Forget the parent's objects (locks, sockets) in a freshly forked child."""
    global _current, _lock
    _current = None
    _lock = threading.Lock()
