"""Provider adapters, one per API family, built from ``[[providers]]`` config."""

from __future__ import annotations

from flexitasks.config import ProviderSettings
from flexitasks.providers.anthropic_adapter import AnthropicAdapter
from flexitasks.providers.base import Completion, ProviderAdapter
from flexitasks.providers.openai_adapter import OpenAIAdapter

__all__ = ["AnthropicAdapter", "Completion", "OpenAIAdapter", "ProviderAdapter", "build_adapter"]


def build_adapter(settings: ProviderSettings) -> ProviderAdapter:
    if settings.kind == "anthropic":
        return AnthropicAdapter(settings)
    return OpenAIAdapter(settings)  # "openai" and "openai-compatible" speak the same API
