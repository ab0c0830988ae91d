"""asyncio producers: ``await achat(...)`` and ``async for event in astream_chat(...)``.

Owns the per-event-loop Redis clients (``redis.asyncio``) of the caller side and
``ResultWaiter``: one pub/sub connection per event loop on which every pending
``achat`` waits for its task's result, as Celery's Redis result backend publishes it
on ``celery-task-meta-<id>`` when it stores it. No thread waits for a result; the only
thread is the one that hands messages to the broker (kombu's client is blocking).

Subscribe, then GET: a result stored before the subscription is read, one stored
after it is received, and Celery stores and publishes in one MULTI, so none is missed.

Which Redis (``redis_connect.aconnect``, the same URLs the workers use): the result backend
is a single Redis or, ``sentinel://``, the master Celery's backend resolves (it writes and
publishes there, so the pub/sub is on the master too); Celery has no Redis Cluster result
backend. The ``[sync]`` Redis, where the streams are, may also be a Cluster: a stream is one
key per task, read and written one key per command, so it needs no hash tag and streams
spread over the slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.asyncio as aioredis
from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from redis.exceptions import RedisError

from flexitasks.celery_app import FlexitasksApp, app
from flexitasks.errors import ConfigError
from flexitasks.redis_connect import SENTINEL_SCHEME, aconnect
from flexitasks.streaming.client import BATCH, POLL, block_ms, enqueue, read_entries, time_left
from flexitasks.streaming.events import Replay, stream_key

log = logging.getLogger(__name__)

STREAM_CONNECTIONS = 256
"""Streams one event loop reads at once (each XREAD BLOCK holds a connection for up to
``POLL``); more ``astream_chat`` calls wait their turn."""
RESULT_CONNECTIONS = 16
"""Connections for the GETs of ``achat`` (short commands; the waiting is on one pub/sub)."""

_send_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flexitasks-send")


async def _send(messages: list[dict[str, Any]], options: dict[str, Any], stream: bool) -> str:
    send = partial(enqueue, messages, options, stream)
    result: AsyncResult = await asyncio.get_running_loop().run_in_executor(_send_pool, send)
    task_id: str = result.id
    del result  # Celery's own result consumer lets go of the task when its AsyncResult goes
    return task_id


def _outcome(backend: Any, payload: bytes | str | None) -> tuple[bool, Any]:
    """(ready, value) of a stored task meta; raises the task's exception as ``get()`` does."""
    if payload is None:
        return False, None
    meta = backend.meta_from_decoded(backend.decode_result(payload))
    status = meta.get("status")
    if status not in states.READY_STATES:
        return False, None
    value = meta.get("result")
    if status in states.PROPAGATE_STATES and isinstance(value, BaseException):
        raise value
    return True, value


class ResultWaiter:
    """Every ``achat`` of one event loop waits here, on one pub/sub connection."""

    def __init__(self, client: aioredis.Redis, backend: Any) -> None:
        self.client, self.backend = client, backend
        self._pubsub = client.pubsub()
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._started: asyncio.Future[None] | None = None
        # One permanent subscription keeps the connection in pub/sub mode, so the reader
        # can run for the loop's life and subscribe calls never race a health check.
        self._keepalive = f"flexitasks:aio-keepalive:{uuid.uuid4().hex}"

    def key(self, task_id: str) -> bytes:
        key = self.backend.get_key_for_task(task_id)
        return key if isinstance(key, bytes) else key.encode()

    async def wait(self, task_id: str, timeout: float | None) -> Any:
        key, loop = self.key(task_id), asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        future: asyncio.Future[bytes] = loop.create_future()
        self._waiting[key] = future
        try:
            await self._start()
            await self._pubsub.subscribe(key)
            ready, value = _outcome(self.backend, await self.client.get(key))
            if ready:
                return value
            while True:
                left = None if deadline is None else max(deadline - loop.time(), 0.0)
                ready, value = _outcome(self.backend, await asyncio.wait_for(future, left))
                if ready:
                    return value
                future = loop.create_future()  # a RETRY (or STARTED) state was published: wait on
                self._waiting[key] = future
        except TimeoutError:
            raise CeleryTimeoutError("The operation timed out.") from None
        finally:
            self._waiting.pop(key, None)
            with contextlib.suppress(RedisError):
                await self._pubsub.unsubscribe(key)

    async def peek(self, task_id: str) -> tuple[bool, Any]:
        """The task's outcome if it is already stored (one GET)."""
        return _outcome(self.backend, await self.client.get(self.key(task_id)))

    async def _start(self) -> None:
        if self._reader is None or self._reader.done():  # no await before the task exists: one reader
            self._started = asyncio.get_running_loop().create_future()
            self._reader = asyncio.get_running_loop().create_task(self._read(), name="flexitasks-results")
        await asyncio.shield(self._started)

    async def _read(self) -> None:
        try:
            await self._pubsub.subscribe(self._keepalive)
        except BaseException as exc:
            self._started.set_exception(exc)
            raise
        self._started.set_result(None)
        backoff = 0.05
        while True:
            try:
                message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL)
            except (RedisError, OSError) as exc:
                log.warning("result listener lost Redis (%s); reconnecting", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                await self._catch_up()
                continue
            backoff = 0.05
            if message is None or message.get("type") != "message":
                continue
            future = self._waiting.get(message["channel"])
            if future is not None and not future.done():
                future.set_result(message["data"])

    async def _catch_up(self) -> None:
        """After a reconnect (pub/sub is at most once): read what may have been missed."""
        for key, future in list(self._waiting.items()):
            with contextlib.suppress(RedisError, OSError):
                payload = await self.client.get(key)
                if payload is not None and not future.done():
                    future.set_result(payload)


@dataclass
class _LoopClients:
    streams: aioredis.Redis
    stream_slots: asyncio.Semaphore  # XREAD BLOCKs in flight: a Cluster client cannot wait for a connection
    prefix: str
    results: ResultWaiter


_per_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()

RESULT_SCHEMES = ("redis://", "rediss://", "unix://", SENTINEL_SCHEME)
"""Celery's Redis result backends (it has none for a Redis Cluster): where ``achat`` subscribes."""


def _clients() -> _LoopClients:
    loop = asyncio.get_running_loop()
    held = _per_loop.get(loop)
    if held is None:
        held = _per_loop[loop] = _new_clients(app)
    return held


def _new_clients(celery_app: FlexitasksApp) -> _LoopClients:
    """This loop's clients: the result backend's Redis as Celery's backend reaches it (the
    master named in its transport options if ``sentinel://``), the ``[sync]`` Redis as the
    workers' stream writers do (single, Sentinel's master or a Cluster). Connects nothing yet."""
    sync = celery_app.settings.sync
    backend_url = str(celery_app.conf.result_backend or "")
    if not backend_url.startswith(RESULT_SCHEMES):
        raise ConfigError(f"achat/astream_chat need a Redis result backend, not {backend_url.split(':')[0]!r}")
    transport = celery_app.conf.result_backend_transport_options or {}
    results = _connect("celery.result_backend", "celery.master_name", backend_url, socket_timeout=None,
                       connect_timeout=sync.socket_timeout, max_connections=RESULT_CONNECTIONS,
                       master_name=transport.get("master_name"), sentinel_kwargs=transport.get("sentinel_kwargs"))
    streams = _connect("sync.redis_url", "sync.master_name", sync.redis_url, socket_timeout=POLL + sync.socket_timeout,
                       connect_timeout=sync.socket_timeout, max_connections=STREAM_CONNECTIONS,
                       master_name=sync.master_name, cluster=sync.cluster)
    return _LoopClients(streams, asyncio.Semaphore(STREAM_CONNECTIONS), sync.key_prefix,
                        ResultWaiter(results, celery_app.backend))


def _connect(setting: str, master_setting: str, url: str, **options: Any) -> aioredis.Redis:
    """``aconnect``, its errors as a ``ConfigError`` naming the setting (the URL is not
    echoed: it may hold a password)."""
    if url.startswith(SENTINEL_SCHEME) and not options.get("master_name"):
        raise ConfigError(f"{setting} is a sentinel:// URL: {master_setting} is required")
    try:
        return aconnect(url, **options)
    except ValueError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


async def achat(messages: list[dict[str, Any]], *, timeout: float | None = None, **options: Any) -> Any:
    """The task's result, awaited without a thread; raises what ``AsyncResult.get()`` raises."""
    clients = _clients()
    task_id = await _send(messages, options, stream=False)
    return await clients.results.wait(task_id, timeout)


async def astream_chat(
    messages: list[dict[str, Any]], *, timeout: float | None = None, **options: Any
) -> AsyncIterator[dict[str, Any]]:
    """``stream_chat`` for asyncio: the same events, read with ``redis.asyncio``."""
    clients = _clients()
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    task_id = await _send(messages, options, stream=True)
    key, replay, last = stream_key(clients.prefix, task_id), Replay(), "0-0"

    while True:
        async with clients.stream_slots:
            block = block_ms(time_left(deadline, loop.time()))
            reply = await clients.streams.xread({key: last}, count=BATCH, block=block)
        if not reply:
            ready, value = await clients.results.peek(task_id)
            if ready:
                yield {"type": "done", "result": value}
                return
            continue
        last, entries = read_entries(reply, last)
        for event in replay.feed(entries):
            yield event
        if replay.failed:
            yield {"type": "done", "result": await clients.results.wait(task_id, time_left(deadline, loop.time()))}
        if replay.finished:
            return
