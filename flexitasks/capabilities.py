"""Which providers can take a request: what each model supports, what a request needs.

Pure: reads ``ProviderSettings.capabilities`` (or the default for the provider's kind)
and the request; the router records the providers it leaves out as skipped attempts.
It does not decide order or failover, only fitness.
"""

from __future__ import annotations

from collections.abc import Sequence

from flexitasks.config import ProviderSettings
from flexitasks.models import ChatRequest, JSONSchemaFormat

ALL = ("tools", "vision", "json_schema")
BY_KIND: dict[str, tuple[str, ...]] = {
    "openai": ALL,
    "anthropic": ALL,
    # A local or third-party server: tools and JSON schemas are common, vision depends on the model.
    "openai-compatible": ("tools", "json_schema"),
}
WHY = {"tools": "tools", "vision": "images", "json_schema": "a JSON schema answer"}


def of(provider: ProviderSettings) -> frozenset[str]:
    """The provider's capabilities: as configured, else its kind's default."""
    listed = provider.capabilities if provider.capabilities is not None else BY_KIND.get(provider.kind, ALL)
    return frozenset(listed)


def needs(request: ChatRequest) -> list[str]:
    """Capabilities a provider must have to take ``request``, in a fixed order."""
    wanted = {
        "tools": request.uses_tools,
        "vision": request.has_images,
        "json_schema": isinstance(request.response_format, JSONSchemaFormat),
    }
    return [c for c in ALL if wanted[c]]


def split(
    providers: Sequence[ProviderSettings], request: ChatRequest
) -> tuple[list[ProviderSettings], dict[str, str]]:
    """(the providers that can take the request, {name: why not} for the others)."""
    wanted = needs(request)
    fit: list[ProviderSettings] = []
    unfit: dict[str, str] = {}
    for provider in providers:
        lacking = [c for c in wanted if c not in of(provider)]
        if lacking:
            unfit[provider.name] = "no " + ", no ".join(lacking)
        else:
            fit.append(provider)
    return fit, unfit


def none_left(request: ChatRequest, unfit: dict[str, str]) -> str:
    """The InvalidRequest message when no eligible provider can take the request."""
    wanted = " and ".join(WHY[c] for c in needs(request))
    reasons = "; ".join(f"{name}: {why}" for name, why in unfit.items())
    return f"invalid chat request: no provider can take {wanted} ({reasons})"
