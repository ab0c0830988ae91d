"""How a call's time limits reach the socket.

``StreamWatch`` holds one call's deadlines (first token, stall between chunks, the
call's total); while it is active, every socket read and write the SDK makes in this
thread waits only until the deadline of the current phase (``WatchedTransport``). So a
provider that sends nothing is cut off at the limit itself, not at the next chunk that
may never come, and a slow trickle of bytes cannot extend a deadline either. Knows
nothing of providers' wire formats.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpcore2
import httpx2

from flexitasks.config import ProviderSettings
from flexitasks.failover.classify import classify
from flexitasks.failures import FailureKind, ProviderFailure

log = logging.getLogger(__name__)

TAIL_GRACE = 0.25
"""Seconds to wait for the end-of-stream marker after the answer is complete: long enough
to read ``[DONE]`` / ``message_stop`` (the connection then goes back to the pool), short
enough that a stream which never sends it still finishes promptly."""

_MIN_WAIT = 0.001  # a socket timeout of 0 would mean non-blocking (an error), not "expired"


def http_timeout(settings: ProviderSettings, budget: float) -> httpx2.Timeout:
    """The SDK's socket timeouts: a backstop only, never shorter than a phase limit.

    Connect has its own limit. A read may wait as long as the larger of the first-token
    and stall limits (the phase in force is enforced more tightly by ``StreamWatch``
    through ``WatchedTransport``), never past the call's total or the request budget.
    """
    total = min(settings.timeout, budget)
    read = min(max(settings.first_token_timeout, settings.stall_timeout), total)
    return httpx2.Timeout(connect=min(settings.connect_timeout, total), read=read, write=total, pool=total)


_active = threading.local()


class StreamWatch:
    """The deadlines of one streamed call, and the verdict when one of them passes.

    Phases: until the first token, ``first_token_timeout`` from the start (connecting and
    waiting for headers count: a silent provider has no first token); after it, at most
    ``stall_timeout`` between progress events; once the answer is complete, ``TAIL_GRACE``
    for the end-of-stream marker. All bounded by ``min(budget, settings.timeout)``.
    Use as a context manager around the SDK call and the iteration of its stream.
    """

    def __init__(
        self, settings: ProviderSettings, budget: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self._settings = settings
        self._start = self._last = clock()
        self._deadline = self._start + min(budget, settings.timeout)
        self._budget_bound = budget < settings.timeout
        self.got_token = False
        self.done = False
        self._previous: StreamWatch | None = None

    def __enter__(self) -> StreamWatch:
        self._previous = getattr(_active, "watch", None)
        _active.watch = self
        return self

    def __exit__(self, *exc: object) -> None:
        _active.watch = self._previous

    def _phase_deadline(self) -> float:
        if self.done:
            return min(self._deadline, self._last + TAIL_GRACE)
        if not self.got_token:
            return min(self._deadline, self._start + self._settings.first_token_timeout)
        return min(self._deadline, self._last + self._settings.stall_timeout)

    def remaining(self) -> float:
        """Seconds the next socket operation may wait."""
        return self._phase_deadline() - self._clock()

    def expired(self) -> ProviderFailure | None:
        """The failure to report if the phase in force is past its deadline, else None."""
        now = self._clock()
        if now < self._phase_deadline() - _MIN_WAIT:
            return None
        s = self._settings
        if now >= self._deadline - _MIN_WAIT:
            what = "request deadline" if self._budget_bound else f"provider timeout ({s.timeout:g}s)"
            return ProviderFailure(FailureKind.TIMEOUT, f"answer not complete within the {what}")
        if self.done:
            return None  # only the end-of-stream marker is missing: the answer stands
        if not self.got_token:
            return ProviderFailure(
                FailureKind.TIMEOUT, f"no first token within first_token_timeout ({s.first_token_timeout:g}s)"
            )
        return ProviderFailure(
            FailureKind.TIMEOUT, f"stream stalled: no chunk within stall_timeout ({s.stall_timeout:g}s)"
        )

    def chunk(self, has_token: bool, progress: bool = True) -> None:
        """An event arrived. ``has_token``: it carries generated output (text, thinking,
        tool call); ``progress``: it is more than a keep-alive ping. Raises the phase's
        failure if it arrived past its deadline (bytes trickling in slowly)."""
        failure = self.expired()
        if failure is not None:
            raise failure
        if progress:
            self._last = self._clock()
        self.got_token = self.got_token or has_token

    def complete(self) -> None:
        """The answer is whole; only the end-of-stream marker may still come."""
        self.done = True
        self._last = self._clock()

    def failure(self, exc: BaseException) -> ProviderFailure:
        """What an exception raised during the call means: a passed deadline explains a
        socket timeout better than the SDK's generic error, anything else is classified."""
        if isinstance(exc, ProviderFailure):
            return exc
        return self.expired() or classify(exc)


def _limit(timeout: float | None) -> float | None:
    """The socket timeout for one read/write: the caller's, shortened to the active watch's phase."""
    watch: StreamWatch | None = getattr(_active, "watch", None)
    if watch is None:
        return timeout
    left = max(watch.remaining(), _MIN_WAIT)
    return left if timeout is None else min(timeout, left)


class _WatchedStream(httpcore2.NetworkStream):
    """A socket stream whose every wait ends at the active ``StreamWatch``'s phase deadline."""

    def __init__(self, inner: httpcore2.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _limit(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _limit(timeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.NetworkStream:
        return _WatchedStream(self._inner.start_tls(ssl_context, server_hostname, _limit(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _WatchedBackend(httpcore2.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore2.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        inner = self._inner.connect_tcp(host, port, _limit(timeout), local_address, socket_options)
        return _WatchedStream(inner)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        return _WatchedStream(self._inner.connect_unix_socket(path, _limit(timeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


_LIMITS = httpx2.Limits(max_connections=100, max_keepalive_connections=20)


class WatchedTransport(httpx2.HTTPTransport):
    """httpx's own transport with a connection pool on the watched network backend.

    If a future httpx2 moves its pool, this degrades to the plain transport (the socket
    timeouts of ``http_timeout`` still hold, deadlines are then checked per chunk only).
    """

    def __init__(self, limits: httpx2.Limits = _LIMITS) -> None:
        super().__init__(limits=limits)
        if isinstance(getattr(self, "_pool", None), httpcore2.ConnectionPool):
            self._pool = httpcore2.ConnectionPool(
                ssl_context=httpx2.create_ssl_context(),
                max_connections=limits.max_connections,
                max_keepalive_connections=limits.max_keepalive_connections,
                keepalive_expiry=limits.keepalive_expiry,
                network_backend=_WatchedBackend(),
            )
        else:  # pragma: no cover - depends on the installed httpx2
            log.warning("httpx2.HTTPTransport has no _pool: stream deadlines are checked per chunk only")


