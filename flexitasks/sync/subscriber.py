"""The per-process sync thread: Redis pub/sub into the local mirror.

One daemon thread per process, with its own connections, started after fork. It
subscribes, then reads the full snapshot (so nothing published before the subscription
is missed), applies events as they arrive, re-reads the snapshot periodically and after
every reconnect (pub/sub is at-most-once), and records this process's applied view in
Redis with a heartbeat TTL so the fleet can be inspected. Redis errors put the gate in
degraded mode and are retried with backoff; they never end the thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from flexitasks.breaker.mirror import Mirror, View
from flexitasks.breaker.redis_store import BreakerStoreError
from flexitasks.breaker.schema import FailureEvent, InvalidEvent, TransitionEvent, parse_event
from flexitasks.breaker.store import BreakerState, BreakerStore
from flexitasks.sync.views import remove_view, view_key, write_view

log = logging.getLogger(__name__)


VIEW_WRITE_DELAY = (0.2, 0.6)
"""Seconds (random within) from a change of the mirror to writing this process's view:
soon enough for ``flexitasks status``, late and spread enough that a fleet's view writes
neither coalesce into one burst nor sit in the path of the next transition's delivery."""


MAX_EVENT_AGE = 60.0
"""Seconds a signed event stays believable (hosts' clocks agree to well within this): an old
event replayed by someone who recorded it is rejected."""
_SIG_PREFIX = b'{"sig":"'


def unsigned(data: bytes | str, secret: bytes) -> str | None:
    """Why ``data`` is not an event signed with ``secret`` (HMAC-SHA256 by the Lua), or None."""
    raw = data.encode() if isinstance(data, str) else data
    head = len(_SIG_PREFIX)
    if not raw.startswith(_SIG_PREFIX) or raw[head + 64 : head + 66] != b'",':
        return "unsigned breaker event (FLEXITASKS_EVENT_SECRET is set)"
    body = b"{" + raw[head + 66 :]
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    if not hmac.compare_digest(expected, raw[head : head + 64]):
        return "breaker event with a wrong signature"
    return None


class Subscriber:
    def __init__(
        self,
        client: redis.Redis,
        store: BreakerStore,
        mirror: Mirror,
        providers: list[str],
        channel: str,
        key_prefix: str,
        resync_interval: float,
        heartbeat_interval: float,
        set_degraded: Callable[[bool], None],
        role: str = "process",
        node: str | None = None,
        event_secret: str | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.mirror = mirror
        self.providers = providers
        self.channel = channel
        self.resync_interval = resync_interval
        self.heartbeat_interval = heartbeat_interval
        self.set_degraded = set_degraded
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.role = role
        self.node = node
        self.key_prefix = key_prefix
        self.key = view_key(key_prefix, self.host, self.pid)
        self.invalid_events = 0
        self._secret = event_secret.encode() if event_secret else None
        self.foreign_events = 0  # events of another deployment (key_prefix) on our channel
        self.applied_events = 0
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_heartbeat = 0.0
        self._view_due: float | None = None
        mirror.listeners.append(self._on_change)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, wait: float = 0.0) -> None:
        self._thread = threading.Thread(target=self._run, name="flexitasks-sync", daemon=True)
        self._thread.start()
        if wait:
            self.connected.wait(wait)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with contextlib.suppress(redis.RedisError):
            remove_view(self.client, self.key_prefix, self.key)

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        """Serve until stopped. Any store error (connection lost, ``LOADING``, ``NOPERM``,
        ``OOM`` on a write, an unreadable reply) is one warning and a backoff of 50 ms doubling
        to 2 s, not a traceback per attempt; a bug gets its traceback once per kind of error."""
        backoff = 0.05
        warned: set[str] = set()
        while not self._stop.is_set():
            try:
                self._serve()
                backoff = 0.05
                warned.clear()
                continue
            except (redis.RedisError, OSError, BreakerStoreError) as exc:
                self.connected.clear()
                self.set_degraded(True)
                what = _describe(exc)
                if what not in warned:
                    log.warning("breaker sync cannot use Redis (%s); retrying with backoff", what)
                    warned.add(what)
            except Exception as exc:  # a bug must not silently stop sync: log it once, keep going
                self.connected.clear()
                self.set_degraded(True)
                what = f"bug:{type(exc).__name__}"
                if what not in warned:
                    log.exception("breaker sync loop failed; restarting it with backoff")
                    warned.add(what)
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 2.0)

    def _serve(self) -> None:
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            while pubsub.get_message(timeout=1.0) is None:  # the subscribe confirmation
                if self._stop.is_set():
                    return
            self._resync()
            self.connected.set()
            last_resync = time.monotonic()
            while not self._stop.is_set():
                due = self._view_due
                wait = 0.2 if due is None else min(0.2, max(0.0, due - time.monotonic()))
                message = pubsub.get_message(timeout=wait)
                if message is not None and message.get("type") == "message":
                    self._handle(message["data"])
                now = time.monotonic()
                if now - last_resync >= self.resync_interval:
                    self._resync()
                    last_resync = now
                due = self._view_due
                if (due is not None and now >= due) or now - self._last_heartbeat >= self.heartbeat_interval:
                    self.heartbeat()
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    def _resync(self) -> None:
        """Reload the authoritative state. Degraded mode (even one entered by a failed call
        while this connection stayed up) ends only once a write has succeeded too: a store
        that answers reads but refuses writes (``OOM``, ``NOPERM``, a replica) cannot count."""
        self.mirror.load(self.store.snapshot(self.providers))
        self.heartbeat()
        self.set_degraded(False)

    def _handle(self, data: bytes | str) -> None:
        if self._secret is not None:
            why = unsigned(data, self._secret)
            if why is not None:
                self._reject(why)
                return
        try:
            event = parse_event(data)
        except InvalidEvent as exc:
            self._reject(str(exc))
            return
        if self._secret is not None and abs(time.time() - event.at) > MAX_EVENT_AGE:
            self._reject(f"stale breaker event for {event.provider!r} (sent {time.time() - event.at:.0f}s ago)")
            return
        if event.deployment is not None and event.deployment != self.key_prefix:
            self.foreign_events += 1  # another deployment on our channel: not ours to apply
            if self.foreign_events == 1:
                log.warning("dropping breaker events of deployment %r on channel %s (key_prefix here: %r)",
                            event.deployment, self.channel, self.key_prefix)
            return
        if event.provider not in self.providers:
            self._reject(f"breaker event for unknown provider {event.provider!r}")
            return
        if self._touches_operator_state(event):
            self._confirm(event.provider)
            return
        if self.mirror.apply_event(event):
            self.applied_events += 1

    def _touches_operator_state(self, event: TransitionEvent | FailureEvent) -> bool:
        """Into or out of ``forced_open``/``disabled``: an event alone never decides that."""
        operator = (BreakerState.FORCED_OPEN, BreakerState.DISABLED)
        current = self.mirror.get(event.provider).snapshot.state
        return current in operator or (isinstance(event, TransitionEvent) and event.state in operator)

    def _confirm(self, provider: str) -> None:
        """Apply what the store says rather than the event: anyone who can PUBLISH can send an
        event, only the Lua (and the operator through it) can change the store."""
        snap = self.store.snapshot([provider])[provider]
        if self.mirror.apply(snap) or self.mirror.get(provider).snapshot.generation == snap.generation:
            self.applied_events += 1

    def _reject(self, why: str) -> None:
        self.invalid_events += 1
        log.warning("%s (ignored; %d so far)", why, self.invalid_events)

    # -- the process view ---------------------------------------------------------------------------
    def view(self) -> dict[str, Any]:
        views = self.mirror.views()
        return {
            "host": self.host,
            "pid": self.pid,
            "node": self.node,
            "role": self.role,
            "applied_at": max((v.applied_at for v in views.values()), default=0.0),
            "invalid_events": self.invalid_events,
            "foreign_events": self.foreign_events,
            "breakers": {name: v.snapshot.to_view(v.applied_at) for name, v in views.items()},
        }

    def heartbeat(self) -> None:
        ttl = max(3, int(self.heartbeat_interval * 3 + 1))
        self._view_due = None
        write_view(self.client, self.key_prefix, self.key, self.view(), ttl)
        self._last_heartbeat = time.monotonic()

    def _on_change(self, _provider: str, _view: View) -> None:
        """Record the new view soon, from this thread: writing it at once would put a Redis
        round trip (and every process's write) in the path of the next event, and in the
        path of the task thread when its own store call changed the mirror."""
        if self._view_due is None:
            self._view_due = time.monotonic() + random.uniform(*VIEW_WRITE_DELAY)



def _describe(exc: BaseException) -> str:
    """A short, stable name for a store error (``OutOfMemoryError``, ``NoPermissionError``,
    ``BusyLoadingError``, ``ConnectionError``...; a bare ResponseError adds its code)."""
    cause = exc.__cause__ if isinstance(exc, BreakerStoreError) and exc.__cause__ is not None else exc
    code = str(cause).split(" ", 1)[0] if type(cause) is redis.ResponseError else ""
    return f"{type(cause).__name__} {code}".strip()
