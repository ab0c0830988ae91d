"""Fake OpenAI/Anthropic provider with injectable faults, for tests, the demo and benchmarks.

Exports are resolved lazily so ``python -m flexitasks.fake_provider.server`` does not import
``server`` twice (runpy warns about that when the package imports it eagerly).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .admin import FakeProviderAdmin
    from .server import FakeProvider, Fault, serve

__all__ = ["FakeProvider", "FakeProviderAdmin", "Fault", "serve"]


def __getattr__(name: str) -> Any:
    if name == "FakeProviderAdmin":
        from .admin import FakeProviderAdmin

        return FakeProviderAdmin
    if name in ("FakeProvider", "Fault", "serve"):
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
