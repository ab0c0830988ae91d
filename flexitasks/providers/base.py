"""What a provider adapter is: one chat call, streamed, normalised, or a ProviderFailure.

Adapters own the SDK client and the translation between ``ChatRequest`` and one API's
wire format. They stream internally so a silent or stalling provider is noticed while
the answer is still coming (``deadlines.py``), and they never hand back a truncated
answer as success. They know nothing of breakers, retries or Celery.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

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
    """The provider's key; a provider configured without ``api_key_env`` (a local
    OpenAI-compatible server, say) sends a placeholder, as the SDKs insist on one."""
    if settings.api_key_env is None:
        return "no-key"
    key = settings.api_key
    if key is None:
        raise ProviderFailure(
            FailureKind.MISCONFIGURED,
            f"environment variable {settings.api_key_env or '(api_key_env not set)'} is empty or unset",
        )
    return key.get_secret_value()
