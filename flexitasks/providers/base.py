"""What a provider adapter is: one chat call, streamed, normalised, or a ProviderFailure.

Adapters own the SDK client and the translation between ``ChatRequest`` and one API's
wire format. They stream internally so a silent or stalling provider is noticed while
the answer is still coming, and they never hand back a truncated answer as success.
They know nothing of breakers, retries or Celery.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import httpx2

from flexitasks.config import ProviderSettings
from flexitasks.failover.classify import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest


@dataclass(frozen=True)
class Completion:
    content: str
    model: str
    finish_reason: str
    input_tokens: int
    output_tokens: int


class ProviderAdapter(Protocol):
    name: str

    def complete(self, request: ChatRequest, budget: float) -> Completion:
        """One call, bounded by ``budget`` seconds in total; raises ``ProviderFailure``."""
        ...


def http_timeout(settings: ProviderSettings, budget: float) -> httpx2.Timeout:
    """Socket timeouts: connect is its own; a read may wait for the first token (or a
    stalled chunk) only as long as the larger of the two limits and never past the budget."""
    read = min(max(settings.first_token_timeout, settings.stall_timeout), settings.timeout, budget)
    return httpx2.Timeout(
        connect=min(settings.connect_timeout, budget), read=read, write=min(settings.timeout, budget), pool=5.0
    )


class StreamWatch:
    """Enforces first-token, stall and total deadlines on chunks as they arrive.

    Sockets enforce the hard limit (see ``http_timeout``); this catches what arrives late.
    """

    def __init__(self, settings: ProviderSettings, budget: float, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._settings = settings
        self._start = self._last = clock()
        self._deadline = self._start + min(budget, settings.timeout)
        self.got_token = False

    def chunk(self, has_token: bool) -> None:
        now = self._clock()
        if now > self._deadline:
            raise ProviderFailure(FailureKind.TIMEOUT, "answer not complete within the request deadline")
        if not self.got_token and now - self._start > self._settings.first_token_timeout:
            raise ProviderFailure(FailureKind.TIMEOUT, "first token later than first_token_timeout")
        if self.got_token and now - self._last > self._settings.stall_timeout:
            raise ProviderFailure(FailureKind.TRUNCATED, "stream stalled longer than stall_timeout")
        self._last = now
        self.got_token = self.got_token or has_token


ClientT = TypeVar("ClientT")


class PerProcessClient(Generic[ClientT]):
    """An SDK client built lazily in the process that uses it.

    HTTP connection pools must not cross a fork, so a client made in the Celery main
    process is never reused by a prefork child.
    """

    def __init__(self, factory: Callable[[], ClientT]) -> None:
        self._factory = factory
        self._pid = -1
        self._client: ClientT | None = None

    def get(self) -> ClientT:
        if self._client is None or self._pid != os.getpid():
            self._client = self._factory()
            self._pid = os.getpid()
        return self._client


def require_key(settings: ProviderSettings) -> str:
    key = settings.api_key
    if key is None:
        raise ProviderFailure(
            FailureKind.MISCONFIGURED,
            f"environment variable {settings.api_key_env or '(api_key_env not set)'} is empty or unset",
        )
    return key.get_secret_value()
