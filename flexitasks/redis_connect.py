"""Which Redis holds the breaker (and limiter) state: a single server, Sentinel or Cluster.

Owns turning ``[sync]`` settings into a redis-py client: ``redis://``/``rediss://``/``unix://``
(``cluster = true``: a ``RedisCluster`` seeded from that node), and ``sentinel://`` URLs
(kombu's form, so one string serves broker, results and breakers:
``sentinel://:pw@h1:26379/0;sentinel://h2:26379``) resolved through the sentinels to the
current master of ``master_name``. Decides nothing about breakers, never retries: callers degrade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

if TYPE_CHECKING:
    from flexitasks.config import SyncSettings

SENTINEL_SCHEME = "sentinel://"
DEFAULT_SENTINEL_PORT = 26379


def sentinel_nodes(url: str) -> tuple[list[tuple[str, int]], int, str | None, str | None]:
    """``(sentinels, db, username, password)`` of a ``sentinel://`` URL; ';' separates sentinels
    (as in kombu), the db and credentials are taken from the first part that has them."""
    nodes: list[tuple[str, int]] = []
    db, username, password = 0, None, None
    for part in filter(None, (p.strip() for p in url.split(";"))):
        if not part.startswith(SENTINEL_SCHEME):
            raise ValueError(f"every part of a sentinel URL starts with sentinel://, not {part.split('://')[0]!r}")
        u = urlsplit(part)
        if not u.hostname:
            raise ValueError("a sentinel URL part has no host")
        nodes.append((u.hostname, u.port or DEFAULT_SENTINEL_PORT))
        path = u.path.strip("/")
        if path:
            if not path.isdigit():
                raise ValueError(f"database {path!r} is not a number")
            db = int(path)
        if u.password and password is None:
            username, password = (unquote(u.username) if u.username else None), unquote(u.password)
    if not nodes:
        raise ValueError("a sentinel URL names no sentinel")
    return nodes, db, username, password


def connect(url: str, *, socket_timeout: float, master_name: str | None = None,
            cluster: bool = False) -> redis.Redis:
    """A client for ``url``; every call bounded by ``socket_timeout`` (connect and read)."""
    timeouts: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}
    if url.startswith(SENTINEL_SCHEME):
        if not master_name:
            raise ValueError("a sentinel:// URL needs master_name")
        nodes, db, username, password = sentinel_nodes(url)
        sentinel = Sentinel(nodes, sentinel_kwargs=dict(timeouts), **timeouts)
        return sentinel.master_for(master_name, db=db, username=username, password=password, **timeouts)
    if cluster:
        # A RedisCluster speaks the same commands; typed as Redis for the callers' sake.
        return RedisCluster.from_url(url, **timeouts)  # type: ignore[return-value]
    return redis.Redis.from_url(url, **timeouts)


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def sync_client(sync: SyncSettings) -> redis.Redis:
    """The client of ``[sync]``: breakers, their events, process views, limits."""
    return connect(sync.redis_url, socket_timeout=sync.socket_timeout, master_name=sync.master_name,
                   cluster=sync.cluster)
