"""Small helpers for running flexitasks locally: a free port, polling for a condition,
stopping a child process.

Shared by the tests, the benchmarks and the demo (which ships in the package, hence
this module lives here). Owns nothing of the product's behaviour; imports only the
standard library.
"""

from __future__ import annotations

import random
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


LISTEN_PORTS = range(20000, 32000)
"""Below Linux's ephemeral range (32768-60999): a port chosen here and bound a moment
later cannot meanwhile become the source port of some outgoing connection."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now, outside the ephemeral range."""
    for _ in range(200):
        port = random.choice(LISTEN_PORTS)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # a crowded range: let the OS pick
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(
    check: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.05,
    what: str | None = None,
    on_poll: Callable[[], None] | None = None,
) -> T | None:
    """Poll ``check`` until it returns something truthy and return that value.

    On timeout: ``TimeoutError`` naming ``what`` and the last value seen when ``what`` is
    given (tests), else ``None`` (callers that report the failure their own way).
    ``on_poll`` runs before every check (the demo turns a pending signal into an exception).
    """
    deadline = time.monotonic() + timeout
    while True:
        if on_poll is not None:
            on_poll()
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            if what is not None:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last seen: {value!r}")
            return None
        time.sleep(interval)


def stop_process(proc: subprocess.Popen[Any], timeout: float) -> None:
    """Terminate our own child ``proc`` (by handle); kill it if it has not exited after ``timeout`` s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
