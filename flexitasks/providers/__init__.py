"""Provider adapters, one per API family, built from ``[[providers]]`` config.

An adapter's module (and with it its SDK) is imported only for a kind some provider is
configured with (issue 8: a worker child imports what it serves). ``preload`` imports
them in a worker's main process, before it forks, so children share those pages and do
not each pay the import on their first call.
"""

from __future__ import annotations

from collections.abc import Iterable

from flexitasks.config import ProviderKind, ProviderSettings
from flexitasks.providers.base import Completion, ProviderAdapter

__all__ = ["Completion", "ProviderAdapter", "build_adapter", "preload"]


def adapter_class(kind: ProviderKind) -> type[ProviderAdapter]:
    if kind == "anthropic":
        from flexitasks.providers.anthropic_adapter import AnthropicAdapter

        return AnthropicAdapter
    from flexitasks.providers.openai_adapter import OpenAIAdapter

    return OpenAIAdapter  # "openai" and "openai-compatible" speak the same API


def preload(providers: Iterable[ProviderSettings]) -> None:
    """Import the adapters (and SDKs) these providers need, and no others."""
    for kind in {p.kind for p in providers}:
        adapter_class(kind)


def build_adapter(settings: ProviderSettings) -> ProviderAdapter:
    return adapter_class(settings.kind)(settings)  # type: ignore[call-arg]
