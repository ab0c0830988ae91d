"""Process views in Redis: where each process records the breaker state it has applied.

Owns the key layout of the views and their index: ``{prefix}:proc:{host}:{pid}`` (JSON,
with a TTL) and ``{prefix}:procs`` (both hash-tagged ``{prefix}``, ``keys.fleet_key``: one
Redis Cluster slot, so the index and one MGET of the views work there too), a set of
those keys that expires with its last writer.
Readers (``flexitasks status``, the exporter, the demo) take the index instead of
scanning the keyspace (``SCAN`` walks every key of a Redis that may hold millions of
other apps' keys), drop members whose view has expired, and skip a malformed view
instead of failing on it. Decides nothing about breakers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from flexitasks.keys import fleet_key


def view_key(prefix: str, host: str, pid: int) -> str:
    return fleet_key(prefix, f"proc:{host}:{pid}")


def index_key(prefix: str) -> str:
    return fleet_key(prefix, "procs")


def write_view(client: redis.Redis, prefix: str, key: str, view: dict[str, Any], ttl: int) -> None:
    """The view and its index entry, in one round trip; the index lives as long as a writer."""
    pipe = client.pipeline(transaction=False)
    pipe.set(key, json.dumps(view), ex=ttl)
    pipe.sadd(index_key(prefix), key)
    pipe.expire(index_key(prefix), ttl)
    pipe.execute()


def remove_view(client: redis.Redis, prefix: str, key: str) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.delete(key)
    pipe.srem(index_key(prefix), key)
    pipe.execute()


@dataclass
class Views:
    processes: list[dict[str, Any]] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)  # keys whose value is not a view


def read_views(client: redis.Redis, prefix: str) -> Views:
    """Every live process's view, found through the index; expired entries are pruned."""
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in client.smembers(index_key(prefix)))
    found = Views()
    if not keys:
        return found
    gone = []
    for key, raw in zip(keys, client.mget(keys), strict=True):
        if raw is None:
            gone.append(key)
            continue
        try:
            view = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            view = None
        breakers = view.get("breakers") if isinstance(view, dict) else None
        if isinstance(breakers, dict) and all(isinstance(b, dict) for b in breakers.values()):
            found.processes.append(view)
        else:
            found.malformed.append(key)
    if gone:
        client.srem(index_key(prefix), *gone)
    return found
