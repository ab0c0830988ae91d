"""Which Redis holds the breaker (and limiter) state: a single server, Sentinel or Cluster.

Owns turning ``[sync]`` settings into a redis-py client: ``redis://``/``rediss://``/``unix://``
(``cluster = true``: a ``RedisCluster`` seeded from that node), and ``sentinel://`` URLs
(kombu's form, so one string serves broker, results and breakers:
``sentinel://:pw@h1:26379/0;sentinel://h2:26379``) resolved through the sentinels to the
current master of ``master_name``. Decides nothing about breakers, never retries: callers degrade.

``aconnect`` is the same for ``redis.asyncio``: the asyncio producers' clients (``streaming/aio.py``) of
``[sync]`` and of a Redis or Sentinel result backend, so a URL that serves the workers serves them alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException
from redis.retry import Retry
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
            cluster: bool = False, retry: Retry | None = None) -> redis.Redis:
    """A client for ``url``; every call bounded by ``socket_timeout`` (connect and read);
    ``retry``: redis-py's retry policy for every kind of client (default: redis-py's own)."""
    timeouts: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}
    if retry is not None:
        timeouts["retry"] = retry
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


def sync_client(sync: SyncSettings) -> redis.Redis:
    """The client of ``[sync]``: breakers, their events, process views, limits."""
    return connect(sync.redis_url, socket_timeout=sync.socket_timeout, master_name=sync.master_name,
                   cluster=sync.cluster)


class _BlockingSentinelPool(AsyncSentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's master pool that makes a caller wait for a free connection, as
    ``BlockingConnectionPool`` does for a single Redis, instead of failing when all are busy."""


def aconnect(url: str, *, socket_timeout: float | None, connect_timeout: float, max_connections: int,
             master_name: str | None = None, cluster: bool = False,
             sentinel_kwargs: dict[str, Any] | None = None) -> aioredis.Redis:
    """A ``redis.asyncio`` client for ``url``, to be used from one event loop only.

    A single Redis or Sentinel's master: at most ``max_connections``, a caller waits for a
    free one. A Cluster: at most ``max_connections`` per node, one more raises
    ``MaxConnectionsError`` (redis-py's cluster client cannot wait), so the caller bounds
    its concurrency. ``sentinel_kwargs``: for the sentinels themselves (Celery's transport
    option of that name, e.g. their password); default: the timeouts. A malformed URL or a
    missing ``master_name`` raises ``ValueError`` here, before any connection is made.
    """
    timeouts: dict[str, Any] = {"socket_timeout": socket_timeout, "socket_connect_timeout": connect_timeout}
    try:
        if url.startswith(SENTINEL_SCHEME):
            if not master_name:
                raise ValueError("a sentinel:// URL needs master_name")
            nodes, db, username, password = sentinel_nodes(url)
            probes = {"socket_timeout": connect_timeout, "socket_connect_timeout": connect_timeout}
            sentinel = AsyncSentinel(nodes, sentinel_kwargs={**probes, **(sentinel_kwargs or {})}, **timeouts)
            return sentinel.master_for(master_name, connection_pool_class=_BlockingSentinelPool, db=db,
                                       username=username, password=password, max_connections=max_connections,
                                       timeout=None)
        if cluster:
            # Typed as Redis for the callers' sake: a RedisCluster speaks the same commands.
            return AsyncRedisCluster.from_url(url, max_connections=max_connections, **timeouts)  # type: ignore[return-value]
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=None, **timeouts)
        return aioredis.Redis(connection_pool=pool)
    except RedisClusterException as exc:  # a db other than 0, a unix socket: not for a Cluster
        raise ValueError(str(exc)) from None
