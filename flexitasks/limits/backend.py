"""What a limiter backend must do: the contract the Redis and memory backends share.

A backend applies ``machine``'s rules atomically to one provider's record and reports
the store's view. It knows nothing of requests, routers or Celery; choosing a backend
(and falling back when Redis is down) is ``limiter.py``'s job.
"""

from __future__ import annotations

from typing import Protocol

from flexitasks.errors import FlexitasksError
from flexitasks.limits.machine import LimitView, Verdict
from flexitasks.limits.policy import LimitPolicy

__all__ = ["LimiterBackend", "LimiterError"]


class LimiterError(FlexitasksError):
    """The limiter store could not carry out a step (Redis down, script error); the
    message names the step and provider, the Redis exception is the ``__cause__``."""


class LimiterBackend(Protocol):
    def check(self, provider: str, policy: LimitPolicy, tokens: int, lease: str, max_wait: float = 0.0) -> Verdict:
        """One atomic step: admit a call of about ``tokens`` tokens under every active
        limit (taking an rpm slot, reserving tokens, holding ``lease``), or book the slot
        after a wait of at most ``max_wait`` (rpm/tpm only), or take nothing."""
        ...

    def finish(self, provider: str, policy: LimitPolicy, lease: str, reserved: int, actual: int | None) -> LimitView:
        """One atomic step after the call: release ``lease``, settle tpm by ``actual - reserved``."""
        ...

    def peek(self, providers: list[str]) -> dict[str, LimitView]:
        """Every named provider's state at one store time; writes nothing."""
        ...
