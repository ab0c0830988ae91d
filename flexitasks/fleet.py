"""Read the fleet's state from Redis: authoritative breakers and live process views.

What ``flexitasks status``, the exporter and the dashboard show, read in one place so
they agree. Read-only: it never changes breaker state, and it needs no worker.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.config import Settings
from flexitasks.limits.status import fleet_limits
from flexitasks.redis_connect import sync_client
from flexitasks.sync.views import read_views

STATE_COLOURS = {"closed": "green", "open": "red", "forced_open": "bold red", "half_open": "yellow",
                 "disabled": "dim"}
"""How the CLI and the demo colour a breaker state (rich markup)."""


def safe_url(url: str) -> str:
    """A Redis URL fit to print: the password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class FleetReader:
    """Reads one fleet through one Redis client; ``settings`` (when given) adds the limits."""

    def __init__(self, client: redis.Redis, key_prefix: str, channel: str, providers: list[str],
                 settings: Settings | None = None) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.providers = providers
        self.settings = settings
        self.store = RedisBreakerStore(client, key_prefix=key_prefix, channel=channel)

    def breakers(self) -> dict[str, dict[str, Any]]:
        """Authoritative snapshot per provider, plus ``probe_in``: seconds until an OPEN
        breaker may let a probe through (0: now; None: not open on a timer)."""
        out: dict[str, dict[str, Any]] = {}
        for name, snap in self.store.snapshot(self.providers).items():
            d = snap.to_dict()
            d["probe_in"] = max(snap.open_until - snap.now, 0.0) if snap.state is BreakerState.OPEN else None
            out[name] = d
        return out

    def status(self) -> dict[str, Any]:
        """Breakers, every live process's view (from the views index), how many views were
        malformed, and the limits' use (``flexitasks.limits.status.fleet_limits``)."""
        views = read_views(self.client, self.key_prefix)
        processes = sorted(views.processes, key=lambda p: (str(p.get("host", "")), str(p.get("role", "")),
                                                           str(p.get("pid", 0))))
        limits = fleet_limits(self.settings, self.client) if self.settings is not None else {}
        return {"providers": self.breakers(), "processes": processes, "malformed_views": views.malformed,
                "limits": limits}


def reader_for(settings: Settings) -> FleetReader:
    s = settings.sync
    # a single Redis, Sentinel's master, or a Cluster (each provider read from its slot's node)
    return FleetReader(sync_client(s), s.key_prefix, s.channel,
                       [p.name for p in settings.providers], settings)


def fleet_status(settings: Settings) -> dict[str, Any]:
    """``{"providers": {name: snapshot}, "processes": [view, ...], "limits": {name: ...}}`` from Redis."""
    reader = reader_for(settings)
    try:
        return reader.status()
    finally:
        reader.client.close()
