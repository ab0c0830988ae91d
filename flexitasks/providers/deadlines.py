"""How a call's time limits reach the socket.

``StreamWatch`` holds one call's deadlines (first token, stall between chunks, the
call's total); while it is active, every socket read and write the SDK makes in this
thread waits only until the deadline of the current phase (``WatchedTransport``). So a
provider that sends nothing is cut off at the limit itself, not at the next chunk that
may never come, and a slow trickle of bytes cannot extend a deadline either. The
transport is an ``httpx2.BaseTransport`` (httpx's documented extension point) owning its
connection pools; it applies the proxy environment and a configurable CA bundle.
``check_deadlines`` is the worker's start-up self-test. Knows nothing of providers' wire
formats.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import threading
import time
import urllib.request
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpcore2
import httpx2

from flexitasks.config import ProviderSettings
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.providers.classify import classify

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
            # Past the total deadline before any phase's own: tokens were still flowing (or the
            # request's budget was shorter than the provider could need): our limit, not its fault.
            steady = self._budget_bound or (self.got_token and now < self._last + s.stall_timeout)
            return ProviderFailure(FailureKind.TIMEOUT, f"answer not complete within the {what}", ours=steady)
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


_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=1000, keepalive_expiry=5.0)
"""One pool's connections: as many as the OpenAI SDK's own default allows, and all of them kept
alive (httpx keeps 20), so a pool never makes a call wait for a slot or close a connection it
will want again (a thread's pool normally holds one per host). Idle ones close after
``keepalive_expiry``."""

# httpcore2's exceptions as httpx2 raises them (what the SDKs catch), most specific first.
_EXCEPTIONS: list[tuple[type[Exception], type[Exception]]] = [
    (httpcore2.ConnectTimeout, httpx2.ConnectTimeout),
    (httpcore2.ReadTimeout, httpx2.ReadTimeout),
    (httpcore2.WriteTimeout, httpx2.WriteTimeout),
    (httpcore2.PoolTimeout, httpx2.PoolTimeout),
    (httpcore2.TimeoutException, httpx2.TimeoutException),
    (httpcore2.ConnectError, httpx2.ConnectError),
    (httpcore2.ReadError, httpx2.ReadError),
    (httpcore2.WriteError, httpx2.WriteError),
    (httpcore2.NetworkError, httpx2.NetworkError),
    (httpcore2.ProxyError, httpx2.ProxyError),
    (httpcore2.UnsupportedProtocol, httpx2.UnsupportedProtocol),
    (httpcore2.LocalProtocolError, httpx2.LocalProtocolError),
    (httpcore2.RemoteProtocolError, httpx2.RemoteProtocolError),
    (httpcore2.ProtocolError, httpx2.ProtocolError),
]


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _EXCEPTIONS:
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


class _Body(httpx2.SyncByteStream):
    """A response body read through the pool; its errors surface as httpx2's."""

    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if close is not None:
            close()


def ssl_context(ca_bundle: str | None, trust_env: bool = True) -> ssl.SSLContext:
    """Verify providers against ``ca_bundle`` (a PEM file or a hashed directory) when given,
    else the system store (``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured, as httpx does)."""
    if ca_bundle is None:
        return httpx2.create_ssl_context(trust_env=trust_env)
    if os.path.isdir(ca_bundle):
        return ssl.create_default_context(capath=ca_bundle)
    return ssl.create_default_context(cafile=ca_bundle)


Pool = httpcore2.ConnectionPool | httpcore2.HTTPProxy | httpcore2.SOCKSProxy


class WatchedTransport(httpx2.BaseTransport):
    """An httpx transport whose every socket wait ends at the active ``StreamWatch``'s deadline.

    It owns its connection pools (httpcore2, on a network backend that shortens each read
    and write to the phase deadline): one for direct connections and one per proxy in use,
    for each thread that calls. One pool shared by hundreds of threads (a ``--pool threads``
    worker) scans all its connections under one lock on every request and every close (and
    polls each idle socket): with 256 calls in flight that was a quarter of the worker's CPU.
    A thread's calls run one at a time, so its pool holds one connection per host, found at
    once; a pool goes (its sockets closed) with its thread.
    A client given a transport of its own ignores the proxy environment, so this transport
    applies it itself, as httpx would: ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``
    (``http``, ``https`` or, with ``socksio`` installed, ``socks5`` proxies) and ``NO_PROXY``,
    read when the transport is built.
    """

    def __init__(
        self, ca_bundle: str | None = None, limits: httpx2.Limits = _LIMITS, trust_env: bool = True
    ) -> None:
        self._ssl = ssl_context(ca_bundle, trust_env)
        self._limits = limits
        self._backend = _WatchedBackend()
        self._proxies = urllib.request.getproxies_environment() if trust_env else {}
        self._local = threading.local()  # .pools: {proxy URL or None: this thread's pool}
        self._open: weakref.WeakSet[Pool] = weakref.WeakSet()  # every thread's, to close them all
        self._lock = threading.Lock()

    def _pool_options(self) -> dict[str, Any]:
        return {
            "max_connections": self._limits.max_connections,
            "max_keepalive_connections": self._limits.max_keepalive_connections,
            "keepalive_expiry": self._limits.keepalive_expiry,
            "network_backend": self._backend,
        }

    def proxy_for(self, url: httpx2.URL) -> str | None:
        """The proxy URL a request to ``url`` goes through (None: direct)."""
        proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
        if not proxy or urllib.request.proxy_bypass_environment(url.host, self._proxies):
            return None
        return proxy if "://" in proxy else f"http://{proxy}"

    def pools(self) -> dict[str | None, Pool]:
        """This thread's pools, by proxy URL (None: direct)."""
        pools: dict[str | None, Pool] | None = getattr(self._local, "pools", None)
        if pools is None:
            pools = self._local.pools = {}
        return pools

    def _pool(self, url: httpx2.URL) -> Pool:
        proxy_url = self.proxy_for(url)
        pools = self.pools()
        pool = pools.get(proxy_url)
        if pool is None:
            if proxy_url is None:
                pool = httpcore2.ConnectionPool(ssl_context=self._ssl, **self._pool_options())
            else:
                pool = self._proxy_pool(httpx2.Proxy(proxy_url))
            pools[proxy_url] = pool
            with self._lock:
                self._open.add(pool)
        return pool

    def _proxy_pool(self, proxy: httpx2.Proxy) -> Pool:
        target = httpcore2.URL(
            scheme=proxy.url.raw_scheme, host=proxy.url.raw_host, port=proxy.url.port, target=proxy.url.raw_path
        )
        if proxy.url.scheme in ("socks5", "socks5h"):
            return httpcore2.SOCKSProxy(proxy_url=target, proxy_auth=proxy.raw_auth, ssl_context=self._ssl,
                                        **self._pool_options())
        if proxy.url.scheme not in ("http", "https"):
            raise httpx2.ProxyError(f"unsupported proxy scheme {proxy.url.scheme!r} (http, https, socks5)")
        return httpcore2.HTTPProxy(proxy_url=target, proxy_auth=proxy.raw_auth, proxy_headers=proxy.headers.raw,
                                   ssl_context=self._ssl, proxy_ssl_context=proxy.ssl_context,
                                   **self._pool_options())

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        assert isinstance(request.stream, httpx2.SyncByteStream)
        core_request = httpcore2.Request(
            method=request.method,
            url=httpcore2.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = self._pool(request.url).handle_request(core_request)
        assert isinstance(response.stream, Iterable)
        return httpx2.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        with self._lock:
            pools = list(self._open)
            self._open.clear()
        for pool in pools:
            pool.close()


def deadlines_active(transport: httpx2.BaseTransport | None = None, limit: float = 0.1,
                     backstop: float = 2.0) -> bool:
    """Start-up self-test: does a socket read through ``transport`` (default: a
    ``WatchedTransport``) end at the active watch's deadline? Asks a local listener that
    never answers (it never accepts: the kernel completes the connect, nothing is ever sent
    back) with a first-token limit of ``limit`` s under a ``backstop`` s socket timeout."""
    probe = ProviderSettings(name="self-test", kind="openai", model="-", connect_timeout=1.0,
                             first_token_timeout=limit, stall_timeout=limit, timeout=backstop * 2)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
        transport = transport if transport is not None else WatchedTransport(trust_env=False)
        with transport, httpx2.Client(transport=transport, timeout=backstop) as client:
            start = time.monotonic()
            with contextlib.suppress(httpx2.TransportError), StreamWatch(probe, budget=backstop * 2):
                client.get(url)
            return time.monotonic() - start < backstop / 2


def check_deadlines() -> None:
    """Log at ERROR when socket deadlines are not in force (the calls still work)."""
    try:
        active = deadlines_active()
    except Exception as exc:  # the check itself must never stop a worker
        log.error("flexitasks: socket deadline self-test failed (%s: %s)", type(exc).__name__, exc)
        return
    if not active:
        log.error("flexitasks: socket deadlines are NOT active: a silent or stalling provider is cut off "
                  "only by the socket read timeout and per stream chunk, not at first_token_timeout/stall_timeout")
