"""The live breaker dashboard: one page, pushed over server-sent events.

Python's stdlib ``ThreadingHTTPServer`` serves three paths: ``/`` (``page.html``, plain
HTML and JavaScript, no build step), ``/state`` (the current state as JSON) and
``/events`` (server-sent events). The page shows, per provider, the authoritative
breaker state, time to the next probe, window counts, calls and failovers per minute
and, for providers with limits, each limit's use; and every process's applied view.
One hub thread subscribes to the breaker channel and
re-reads the fleet (``fleet.py``) on every event and once a second, so the page changes
within a second of a transition and its clocks and rates keep moving. It needs Redis,
never a worker; with Redis down it keeps serving and says so. Read-only.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis

from flexitasks.breaker.redis_store import BreakerStoreError
from flexitasks.fleet import FleetReader
from flexitasks.metrics.counters import rates_by_provider, read_recent

log = logging.getLogger(__name__)

KEEPALIVE = 15.0  # seconds between SSE comments on an idle stream


class Hub:
    """Reads the fleet on each breaker event (and every ``tick``) and fans the JSON out."""

    def __init__(self, reader: FleetReader, channel: str, about: dict[str, Any], tick: float = 1.0) -> None:
        self.reader = reader
        self.channel = channel
        self.about = about
        self.tick = tick
        self.latest = json.dumps({"redis_up": False, "error": "starting", **about})
        self._clients: set[queue.Queue[str]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-hub", daemon=True)
        self.events_seen = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=3)

    def subscribe(self) -> queue.Queue[str]:
        q: queue.Queue[str] = queue.Queue(maxsize=16)
        with self._lock:
            self._clients.add(q)
        return q

    def unsubscribe(self, q: queue.Queue[str]) -> None:
        with self._lock:
            self._clients.discard(q)

    def publish(self, trigger: str) -> None:
        try:
            state: dict[str, Any] = {"redis_up": True, **self.reader.status()}
            state["per_minute"] = rates_by_provider(read_recent(self.reader.client, self.reader.key_prefix))
        except (redis.RedisError, BreakerStoreError, OSError) as exc:
            state = {"redis_up": False, "error": f"Redis unreachable: {exc}"}
        state.update(self.about, trigger=trigger, served_at=time.time(), events_seen=self.events_seen)
        self.latest = data = json.dumps(state)
        with self._lock:
            clients = list(self._clients)
        for q in clients:
            with contextlib.suppress(queue.Full):  # a stuck browser tab skips updates
                q.put_nowait(data)

    def _run(self) -> None:
        backoff = 0.1
        while not self._stop.is_set():
            pubsub = self.reader.client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                self.publish("subscribed")
                backoff = 0.1
                last = time.monotonic()
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=max(self.tick - (time.monotonic() - last), 0.01))
                    if message is not None and message.get("type") == "message":
                        self.events_seen += 1
                        self.publish("event")
                        last = time.monotonic()
                    elif time.monotonic() - last >= self.tick:
                        self.publish("tick")
                        last = time.monotonic()
            except (redis.RedisError, OSError):
                self.publish("redis-down")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()


def _page() -> bytes:
    return importlib.resources.files("flexitasks.dashboard").joinpath("page.html").read_bytes()


def make_handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    page = _page()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard: " + format, *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/":
                self._send(200, page, "text/html; charset=utf-8")
            elif path == "/state":
                self._send(200, hub.latest.encode(), "application/json")
            elif path == "/events":
                self._stream()
            else:
                self._send(404, b'{"error": "not found"}', "application/json")

        def _stream(self) -> None:
            q = hub.subscribe()
            try:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-store")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                self.wfile.write(f"retry: 1000\ndata: {hub.latest}\n\n".encode())
                self.wfile.flush()
                while True:
                    try:
                        chunk = f"data: {q.get(timeout=KEEPALIVE)}\n\n"
                    except queue.Empty:
                        chunk = ": keep-alive\n\n"
                    self.wfile.write(chunk.encode())
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError, OSError):
                pass
            finally:
                hub.unsubscribe(q)

    return Handler


def serve(reader: FleetReader, channel: str, about: dict[str, Any], host: str = "127.0.0.1",
          port: int = 9809, ready: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted."""
    hub = Hub(reader, channel, about)
    hub.start()
    server = ThreadingHTTPServer((host, port), make_handler(hub))
    server.daemon_threads = True
    url = f"http://{host}:{server.server_address[1]}/"
    (ready or (lambda u: print(f"flexitasks dashboard on {u}", flush=True)))(url)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        hub.stop()
