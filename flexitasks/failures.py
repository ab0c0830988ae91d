"""Failure kinds: what a failed provider call means for routing and for the breaker.

Pure and SDK-free, so the breaker, the router, the policy and the adapters can all
share it without reaching the SDKs. Turning an SDK exception into one of these is
``providers.classify``'s job, not this module's; whether a kind ends the request or fails
over is ``failover.policy``'s (it depends on settings such as ``content_policy_failover``).
"""

from __future__ import annotations

import enum

from flexitasks.redact import redact


class FailureKind(enum.StrEnum):
    UNAVAILABLE = "unavailable"  # connection error, 408, 5xx, overloaded: try again / elsewhere
    RATE_LIMITED = "rate_limited"  # 429
    TIMEOUT = "timeout"  # silent: no response, late first token, stall; not retried on the same route
    TRUNCATED = "truncated"  # stream cut or malformed: restart cleanly, never returned as an answer
    MISCONFIGURED = "misconfigured"  # 401/403/404, missing key: fail over, log loudly
    CONTEXT_LENGTH = "context_length"  # too long for this model: next provider, provider not blamed
    CONTENT_POLICY = "content_policy"  # refused content: fail the request (or next provider: content_policy_failover)
    BAD_REQUEST = "bad_request"  # any other 400: fail the request
    INVALID_OUTPUT = "invalid_output"  # answer not the JSON asked for: next provider, provider not blamed
    BILLING = "billing"  # out of credit or quota, 402: fail over at once, log loudly, provider not blamed

    @property
    def blames_provider(self) -> bool:
        """Only outages count against the breaker; our own bad requests never open it."""
        return self in _OUTAGES

    @property
    def needs_operator(self) -> bool:
        """Only a person can fix it (a key, a model name, billing): logged at ERROR."""
        return self in (FailureKind.MISCONFIGURED, FailureKind.BILLING)


_OUTAGES = frozenset(
    {FailureKind.UNAVAILABLE, FailureKind.RATE_LIMITED, FailureKind.TIMEOUT, FailureKind.TRUNCATED}
)


class ProviderFailure(Exception):
    """A provider call failed; ``kind`` says what that means for routing."""

    def __init__(
        self,
        kind: FailureKind,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        ours: bool = False,
    ) -> None:
        message = redact(message)  # providers echo keys in error text; none goes further than here
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.ours = ours
        """The call was cut by a limit of ours while the provider was answering steadily (the
        request's own deadline, or ``timeout`` with tokens still flowing): says nothing about
        the provider's health, so it never counts against the breaker nor fails a probe."""

    @property
    def blames_provider(self) -> bool:
        return self.kind.blames_provider and not self.ours

    def __str__(self) -> str:
        status = f" {self.status}" if self.status else ""
        return f"{self.kind.value}{status}: {self.message}"
