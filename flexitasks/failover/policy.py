"""Failover policy: after a failed call, retry here, go to the next provider, or give up.

Composed tenacity-style from small named rules, tried in order; the first that has an
opinion decides. Pure functions of the failure and the attempt count: the router does
the sleeping, so these are unit-testable without a clock.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flexitasks.config import RetrySettings
from flexitasks.failover.classify import FailureKind, ProviderFailure


class Action(str, enum.Enum):
    RETRY_SAME = "retry_same"
    NEXT_PROVIDER = "next_provider"
    FAIL_REQUEST = "fail_request"


@dataclass(frozen=True)
class Decision:
    action: Action
    wait: float = 0.0
    cool_down: float | None = None  # tell the fleet to skip this provider for this long
    why: str = ""


Rule = Callable[[ProviderFailure, int], Decision | None]
"""(failure, retries already made on this provider) -> a decision, or None to pass."""


def fail_request_on(*kinds: FailureKind) -> Rule:
    def rule(f: ProviderFailure, _retries: int) -> Decision | None:
        return Decision(Action.FAIL_REQUEST, why=f"{f.kind.value}: not retried") if f.kind in kinds else None

    return rule


def next_provider_on(*kinds: FailureKind) -> Rule:
    def rule(f: ProviderFailure, _retries: int) -> Decision | None:
        return Decision(Action.NEXT_PROVIDER, why=f"{f.kind.value}: fail over") if f.kind in kinds else None

    return rule


def honour_retry_after(max_wait: float) -> Rule:
    """A provider that says when to come back: short waits are worth it, long ones are not."""

    def rule(f: ProviderFailure, retries: int) -> Decision | None:
        if f.retry_after is None or f.kind not in (FailureKind.RATE_LIMITED, FailureKind.UNAVAILABLE):
            return None
        if f.retry_after <= max_wait and retries == 0:
            return Decision(Action.RETRY_SAME, wait=f.retry_after, cool_down=f.retry_after, why="retry-after")
        return Decision(Action.NEXT_PROVIDER, cool_down=f.retry_after, why="retry-after too long")

    return rule


def backoff_on(kind: FailureKind, attempts: int, base: float, rng: random.Random | None = None) -> Rule:
    """Exponential backoff with full jitter, then fail over after ``attempts`` retries."""
    rand = rng or random.Random()

    def rule(f: ProviderFailure, retries: int) -> Decision | None:
        if f.kind is not kind:
            return None
        if retries >= attempts:
            return Decision(Action.NEXT_PROVIDER, why=f"{kind.value}: {retries} retries spent")
        return Decision(Action.RETRY_SAME, wait=base * 2**retries * (0.5 + rand.random() / 2), why="backoff")

    return rule


def always(action: Action) -> Rule:
    return lambda f, _retries: Decision(action, why=f"{f.kind.value}: default")


@dataclass(frozen=True)
class FailoverPolicy:
    rules: Sequence[Rule]

    def decide(self, failure: ProviderFailure, retries: int) -> Decision:
        for rule in self.rules:
            decision = rule(failure, retries)
            if decision is not None:
                return decision
        return Decision(Action.NEXT_PROVIDER, why="no rule")


def default_policy(settings: RetrySettings, rng: random.Random | None = None) -> FailoverPolicy:
    """The documented behaviour for each fault (README, 'Failure conduct')."""
    return FailoverPolicy(
        rules=(
            fail_request_on(FailureKind.CONTENT_POLICY, FailureKind.BAD_REQUEST),
            next_provider_on(FailureKind.CONTEXT_LENGTH, FailureKind.MISCONFIGURED, FailureKind.TIMEOUT),
            honour_retry_after(settings.retry_after_wait_max),
            backoff_on(FailureKind.RATE_LIMITED, settings.rate_limit_attempts - 1, settings.rate_limit_backoff, rng),
            backoff_on(FailureKind.UNAVAILABLE, settings.same_provider_retries, settings.same_provider_backoff, rng),
            backoff_on(FailureKind.TRUNCATED, settings.same_provider_retries, settings.same_provider_backoff, rng),
            always(Action.NEXT_PROVIDER),
        )
    )
