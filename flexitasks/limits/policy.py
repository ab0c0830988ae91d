"""What one provider's limits are: the frozen policy both backends and the Lua read.

Owns the shape of a provider's limits and how they are derived from its settings
(defaults such as ``burst`` = one second's worth). Validation of the numbers a person
types lives in ``config.py`` (one message, exit 2); this module trusts them.
It must not touch Redis, clocks or the router.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flexitasks.config import ProviderSettings

__all__ = ["LIMITS", "LimitPolicy", "policy_of"]

LIMITS: tuple[str, ...] = ("rpm", "tpm", "in_flight")
"""Every limit a provider may have, in the order a check reports refusals."""

LEASE_MARGIN = 5.0
"""Seconds an in-flight lease outlives the longest call its provider allows, so only a
holder that died (never a slow call) lets its lease expire."""


@dataclass(frozen=True)
class LimitPolicy:
    """One provider's fleet-wide limits; ``None`` means that limit is off.

    ``burst`` is in requests (rpm's bucket depth), ``lease_ttl`` in seconds.
    """

    rpm: float | None = None
    burst: float = 1.0
    tpm: int | None = None
    max_in_flight: int | None = None
    lease_ttl: float = 65.0

    @property
    def limited(self) -> bool:
        """False: the provider costs no Redis command per call."""
        return self.rpm is not None or self.tpm is not None or self.max_in_flight is not None

    @property
    def needs_finish(self) -> bool:
        """A call must be reported back (tpm settlement, lease release); rpm alone needs not."""
        return self.tpm is not None or self.max_in_flight is not None

    def capacity(self, limit: str) -> float:
        """The most a limit holds at once: rpm's burst, a minute of tokens, the in-flight cap."""
        return {"rpm": self.burst, "tpm": self.tpm, "in_flight": self.max_in_flight}[limit] or 0.0

    def active(self) -> tuple[str, ...]:
        on = {"rpm": self.rpm, "tpm": self.tpm, "in_flight": self.max_in_flight}
        return tuple(name for name in LIMITS if on[name] is not None)


def policy_of(provider: ProviderSettings) -> LimitPolicy:
    """The policy of a configured provider (burst defaults to one second's worth, >= 1)."""
    rpm = provider.rpm
    burst = provider.burst if provider.burst is not None else max(1.0, rpm / 60.0) if rpm else 1.0
    longest = max(provider.timeout, provider.first_token_timeout, provider.stall_timeout)
    return LimitPolicy(
        rpm=float(rpm) if rpm is not None else None,
        burst=float(burst),
        tpm=provider.tpm,
        max_in_flight=provider.max_in_flight,
        lease_ttl=longest + provider.connect_timeout + LEASE_MARGIN,
    )
