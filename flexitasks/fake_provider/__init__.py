"""Fake OpenAI/Anthropic provider with injectable faults, for tests, the demo and benchmarks."""

from .admin import FakeProviderAdmin
from .server import FakeProvider, Fault, serve

__all__ = ["FakeProvider", "FakeProviderAdmin", "Fault", "serve"]
