"""Client for a fake provider's ``/_admin`` endpoint (faults, stats, request log).

Owns only the wire calls; used by tests, the demo and the benchmarks, so it keeps one
keep-alive ``http.client`` connection (the stdlib layer under ``urllib.request``) instead
of opening a new TCP connection per call. A pure client: it imports nothing of the server
(the server validates every fault and answers 400 with the reason).
"""

from __future__ import annotations

import http.client
import json
import threading
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel


class FakeProviderAdmin:
    """Set/clear faults and read counters of one fake provider; thread-safe."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http:// URL of a fake provider, got {url!r}")
        self.url = url.rstrip("/")
        self._host, self._port, self._timeout = parts.hostname, parts.port or 80, timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        with self._lock:
            while True:
                reused = self._conn is not None
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
                try:
                    self._conn.request(method, path, body=data, headers=headers)
                    resp = self._conn.getresponse()
                    raw = resp.read()
                    break
                except (OSError, http.client.HTTPException):
                    self._conn.close()
                    self._conn = None
                    if not reused:  # a reused keep-alive socket may just have been closed: retry once, fresh
                        raise
        payload = json.loads(raw) if raw else None
        if resp.status >= 400:
            err = ValueError if resp.status == 400 else RuntimeError
            raise err(f"{method} {self.url}{path} -> {resp.status}: {payload}")
        return payload

    def set_fault(self, fault: BaseModel | None = None, /, **fields: Any) -> dict[str, Any]:
        """Replace the current fault; pass a ``Fault`` or its fields. An invalid fault raises
        ``ValueError`` with the server's reason."""
        if fault is not None and fields:
            raise TypeError("pass either a Fault or keyword fields, not both")
        body = fault.model_dump(exclude_defaults=True) if fault is not None else fields
        return self._call("POST", "/_admin/fault", body)["fault"]

    def fault(self) -> dict[str, Any]:
        """The current fault (or None) and how many uses remain."""
        return self._call("GET", "/_admin/fault")

    def clear(self) -> None:
        """Remove the fault; counters and the request log are kept."""
        self._call("DELETE", "/_admin/fault")

    def reset(self) -> None:
        """Remove the fault and zero the counters and request log."""
        self._call("POST", "/_admin/reset")

    def stats(self) -> dict[str, Any]:
        """``{"name", "requests", "by_path", "by_status", "by_fault", "fault", "remaining",
        "in_flight", "max_in_flight"}`` (chat requests being served now; the most at once)."""
        return self._call("GET", "/_admin/stats")

    def requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Request log entries with ``seq > since`` (oldest first)."""
        return self._call("GET", f"/_admin/requests?since={int(since)}")["requests"]

    def health(self) -> bool:
        """True if the server answers; for waiting on a freshly started subprocess."""
        try:
            return bool(self._call("GET", "/_admin/health").get("ok"))
        except OSError:
            return False

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> FakeProviderAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
