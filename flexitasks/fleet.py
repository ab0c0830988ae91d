"""The fleet's breakers as Redis holds them: authoritative state and every live process view.

Read-only; shared by ``flexitasks status``, ``flexitasks metrics`` and the demo. Takes the
settings it reads with (the Redis URL, key prefix, providers) as an argument.
"""

from __future__ import annotations

from typing import Any

import redis

from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.config import Settings
from flexitasks.limits.status import fleet_limits
from flexitasks.sync.views import read_views

STATE_COLOURS = {"closed": "green", "open": "red", "forced_open": "bold red", "half_open": "yellow",
                 "disabled": "dim"}
"""How the CLI and the demo colour a breaker state (rich markup)."""


def fleet_status(settings: Settings) -> dict[str, Any]:
    """``{"providers": {name: snapshot}, "processes": [view, ...], "limits": {name: ...}}``
    from Redis (``limits``: see ``flexitasks.limits.status.fleet_limits``)."""
    s = settings.sync
    client = redis.Redis.from_url(s.redis_url, socket_timeout=s.socket_timeout,
                                  socket_connect_timeout=s.socket_timeout)
    try:
        store = RedisBreakerStore(client, key_prefix=s.key_prefix, channel=s.channel)
        names = [p.name for p in settings.providers]
        providers = {name: snap.to_dict() for name, snap in store.snapshot(names).items()}
        views = read_views(client, s.key_prefix)
        limits = fleet_limits(settings, client)
    finally:
        client.close()
    processes = sorted(views.processes, key=lambda p: (str(p.get("host", "")), str(p.get("role", "")),
                                                       str(p.get("pid", 0))))
    return {"providers": providers, "processes": processes, "malformed_views": views.malformed, "limits": limits}
