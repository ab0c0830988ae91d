"""Wires one process's breaker sync: Redis client, store, mirror, subscriber, gate.

``process_gate()`` is what the runtime calls in any process that routes calls (prefork
child, worker main process, a producer running tasks eagerly); it builds everything
once per pid, so nothing made before a fork is used after it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import redis

from flexitasks.breaker.gate import FleetGate, TransitionListener
from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import StoreResult
from flexitasks.celery_app import settings
from flexitasks.per_process import PerProcess
from flexitasks.sync.subscriber import Subscriber

log = logging.getLogger(__name__)


@dataclass
class ProcessSync:
    client: redis.Redis
    store: RedisBreakerStore
    mirror: Mirror
    gate: FleetGate
    subscriber: Subscriber


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
    return ProcessSync(client, store, mirror, gate, sub)


_process = PerProcess(build)
current = _process.get
existing = _process.existing  # this process's sync if started, never a parent's


def process_gate() -> FleetGate:
    return current().gate
