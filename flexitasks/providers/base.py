"""What a provider adapter is: one chat call, streamed, normalised, or a ProviderFailure.

Adapters own the SDK client and the translation between ``ChatRequest`` and one API's
wire format. They stream internally so a silent or stalling provider is noticed while
the answer is still coming (``deadlines.py``), and they never hand back a truncated
answer as success. They know nothing of breakers, retries or Celery.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flexitasks.config import ProviderSettings
from flexitasks.failures import FailureKind, ProviderFailure
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


def require_key(settings: ProviderSettings) -> str:
    """The provider's key; a provider configured without ``api_key_env`` (a local
    OpenAI-compatible server, say) sends a placeholder, as the SDKs insist on one."""
    if settings.api_key_env is None:
        return "no-key"
    key = settings.api_key
    if key is None:
        raise ProviderFailure(
            FailureKind.MISCONFIGURED, f"environment variable {settings.api_key_env} is empty or unset"
        )
    return key.get_secret_value()
