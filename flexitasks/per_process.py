"""``PerProcess``: one object per process, built on first use and again after a fork.

SDK clients (HTTP pools), Redis connections, sync threads and the router built on them
must never cross a fork: a prefork child that used its parent's would share sockets
with it. Every such object in flexitasks is held by one of these.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PerProcess(Generic[T]):
    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._pid = -1
        self._lock = threading.Lock()
        self._lock_pid = os.getpid()

    def get(self) -> T:
        pid = os.getpid()
        value = self._value
        if value is not None and self._pid == pid:
            return value
        if self._lock_pid != pid:  # a lock copied by fork while held would never be released
            self._lock, self._lock_pid = threading.Lock(), pid
        with self._lock:
            if self._value is None or self._pid != pid:
                self._value, self._pid = self._factory(), pid
            return self._value

    def existing(self) -> T | None:
        """This process's object if it has been built (never a parent's)."""
        return self._value if self._pid == os.getpid() else None
