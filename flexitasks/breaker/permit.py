"""What the router asks of circuit breakers: a ``Permit`` per call and the gate protocol.

The router (``failover/router.py``) calls any ``BreakerGate``; ``FleetGate`` (``gate.py``)
is the fleet-wide one, ``OpenGate`` the one without breakers. Lives in ``breaker/`` so the
breaker depends on nothing above it; imports only ``flexitasks.failures``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from flexitasks.failures import ProviderFailure


@dataclass(frozen=True)
class Permit:
    """Leave to make one call. ``probe``: it is the half-open probe, owned by ``owner``
    (one call's own name, so that only this call may report the probe's result)."""

    provider: str
    probe: bool = False
    owner: str | None = None


class BreakerGate(Protocol):
    """What the router needs from circuit breakers (see ``flexitasks.breaker.gate``)."""

    def admit(self, provider: str, may_probe: bool = True) -> Permit | None:
        """Leave to call ``provider``, or None. ``may_probe=False``: the caller has too little
        time left to be the half-open probe (less than a first token may take): never make
        it the probe, whose verdict would then be our deadline's, not the provider's."""
        ...

    def succeeded(self, permit: Permit) -> None: ...
    def failed(self, permit: Permit, failure: ProviderFailure) -> None: ...
    def cool_down(self, provider: str, seconds: float) -> None: ...

    def reopens_in(self, provider: str) -> float | None:
        """Seconds until a provider skipped for a cool-down may be called again (None:
        not cooling down), so a run with nowhere else to go can wait for it."""
        ...


class OpenGate:
    """No breakers: every provider is always admitted."""

    def admit(self, provider: str, may_probe: bool = True) -> Permit | None:
        return Permit(provider)

    def succeeded(self, permit: Permit) -> None:
        pass

    def failed(self, permit: Permit, failure: ProviderFailure) -> None:
        pass

    def cool_down(self, provider: str, seconds: float) -> None:
        pass

    def reopens_in(self, provider: str) -> float | None:
        return None
