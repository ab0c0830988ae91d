"""Wires one process's breaker sync: Redis client, store, mirror, subscriber, gate.

``start_sync`` builds it from the settings it is given and starts the subscriber thread;
the caller keeps it (the worker's bootstep, a child's runtime: ``runtime.py``) and stops
it. Every transition the gate makes is sent as the ``breaker_transition`` signal. Holds
no module state: two processes, or two apps, never share one.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from flexitasks.breaker.gate import FleetGate
from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.config import Settings
from flexitasks.redis_connect import sync_client
from flexitasks.signals import announce
from flexitasks.sync.subscriber import Subscriber


@dataclass
class ProcessSync:
    client: redis.Redis
    store: RedisBreakerStore
    mirror: Mirror
    gate: FleetGate
    subscriber: Subscriber

    def stop(self) -> None:
        """Stop the sync thread and remove this process's view."""
        self.subscriber.stop()


def start_sync(settings: Settings, role: str = "process", node: str | None = None, wait: float = 1.0) -> ProcessSync:
    """Build and start this process's sync; wait at most ``wait`` s for the first snapshot
    (Celery kills a prefork child whose init blocks for 4 s)."""
    s = settings.sync
    client = sync_client(s)  # a single Redis, Sentinel's current master, or a Cluster
    names = [p.name for p in settings.providers]
    secret = s.event_secret.get_secret_value() if s.event_secret is not None else None
    store = RedisBreakerStore(client, key_prefix=s.key_prefix, channel=s.channel, event_secret=secret)
    mirror = Mirror(names)
    policies = {p.name: settings.breaker_policy(p) for p in settings.providers}
    gate = FleetGate(store, mirror, policies, on_transition=announce)
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
        node=node,
        event_secret=secret,
    )
    sub.start(wait=wait)
    return ProcessSync(client, store, mirror, gate, sub)
