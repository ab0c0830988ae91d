"""Every Redis key name flexitasks itself writes, in one place, hash-tagged for Redis Cluster.

Owns the naming (pure: no Redis import, no settings) and the grouping of providers by
slot. A provider's keys share the hash tag ``{prefix:provider}``, so every key one Lua
call touches (the breaker's state and window, the limiter's hash and leases) lives in
one cluster slot and no EVALSHA is ever CROSSSLOT; keys of the fleet as a whole
(process views and their index) share ``{prefix}``. On a single Redis the braces are
just characters. Callers build names here, never by hand.
"""

from __future__ import annotations

from typing import Any

TAG_CHARS = "{}"
"""Characters a key prefix and a provider name must not contain (they would move the tag)."""


def provider_tag(prefix: str, provider: str) -> str:
    """The hash tag of one provider's keys: ``{prefix:provider}``."""
    return f"{{{prefix}:{provider}}}"


def provider_key(prefix: str, provider: str, kind: str) -> str:
    """``{prefix:provider}:kind``, e.g. ``{flexitasks:openai}:breaker``."""
    return f"{provider_tag(prefix, provider)}:{kind}"


def fleet_key(prefix: str, kind: str) -> str:
    """``{prefix}:kind``: fleet-wide keys, all in one slot so one MGET reads them."""
    return f"{{{prefix}}}:{kind}"


def by_slot(client: Any, prefix: str, providers: list[str]) -> list[list[str]]:
    """Providers grouped so each group's keys share one cluster slot: one group on a single
    Redis (one round trip reads them all), one per slot on a Redis Cluster (a client with
    ``keyslot``, i.e. redis-py's ``RedisCluster``)."""
    keyslot = getattr(client, "keyslot", None)
    if keyslot is None:
        return [list(providers)] if providers else []
    groups: dict[int, list[str]] = {}
    for name in providers:
        groups.setdefault(keyslot(provider_tag(prefix, name)), []).append(name)
    return list(groups.values())
