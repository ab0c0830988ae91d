"""Failover policy: after a failed call, retry here, go to the next provider, or give up.

Composed tenacity-style from small named rules, tried in order; the first that has an
opinion decides. Pure functions of the failure and the attempt count: the router does
the sleeping, so these are unit-testable without a clock.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flexitasks.config import RetrySettings
from flexitasks.failures import FailureKind, ProviderFailure


class Action(enum.StrEnum):
    RETRY_SAME = "retry_same"
    NEXT_PROVIDER = "next_provider"
    FAIL_REQUEST = "fail_request"


@dataclass(frozen=True)
class Decision:
    """What to do after one failed call.

    ``wait``: seconds to pause before RETRY_SAME. ``cool_down``: the provider asked not
    to be called for this long; the router tells the whole fleet (breaker gate) and, with
    NEXT_PROVIDER, may come back to it after that time if no other provider answers.
    """

    action: Action
    wait: float = 0.0
    cool_down: float | None = None
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


def honour_retry_after(max_wait: float, cap: float = math.inf) -> Rule:
    """A provider that says when to come back (429/503 with a positive Retry-After) cools
    down fleet-wide for that long, at most ``cap`` (``retry_after_max``: one response must
    not take a provider out of the fleet for a day). A short wait (<= ``max_wait``) is
    waited out once and the same provider retried: the preferred model is worth a few
    seconds in a background task. A longer one fails over at once. ``Retry-After: 0`` says
    nothing: backoff decides."""

    def rule(f: ProviderFailure, retries: int) -> Decision | None:
        ra = f.retry_after
        if ra is None or ra <= 0 or f.kind not in (FailureKind.RATE_LIMITED, FailureKind.UNAVAILABLE):
            return None
        ra = min(ra, cap)
        if ra <= max_wait and retries == 0:
            return Decision(Action.RETRY_SAME, wait=ra, cool_down=ra, why=f"retry-after {ra:g}s: waiting")
        return Decision(Action.NEXT_PROVIDER, cool_down=ra, why=f"retry-after {ra:g}s: fail over")

    return rule


def backoff_wait(base: float, retries: int, rand: float) -> float:
    """Exponential backoff with equal jitter: between half and all of ``base * 2**retries``.

    Jitter spreads a fleet's retries apart; the fixed half is a floor on the spacing, so
    a provider never sees one request's retries closer together than ``base / 2``.
    """
    full = base * 2**retries
    return full / 2 + full / 2 * rand


def backoff_on(kind: FailureKind, attempts: int, base: float, rng: random.Random | None = None) -> Rule:
    """Retry the same provider up to ``attempts`` times with ``backoff_wait``, then fail over."""
    rand = rng or random.Random()

    def rule(f: ProviderFailure, retries: int) -> Decision | None:
        if f.kind is not kind:
            return None
        if retries >= attempts:
            return Decision(Action.NEXT_PROVIDER, why=f"{kind.value}: {retries} retries spent")
        return Decision(Action.RETRY_SAME, wait=backoff_wait(base, retries, rand.random()), why="backoff")

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
    s = settings
    refusal = (FailureKind.CONTENT_POLICY,)
    fatal, onward = ((), refusal) if s.content_policy_failover else (refusal, ())
    return FailoverPolicy(
        rules=(
            fail_request_on(FailureKind.BAD_REQUEST, *fatal),
            next_provider_on(
                FailureKind.CONTEXT_LENGTH, FailureKind.MISCONFIGURED, FailureKind.BILLING, FailureKind.TIMEOUT
            ),
            next_provider_on(*onward),
            honour_retry_after(s.retry_after_wait_max, s.retry_after_max or math.inf),
            backoff_on(FailureKind.RATE_LIMITED, s.rate_limit_attempts - 1, s.rate_limit_backoff, rng),
            backoff_on(FailureKind.UNAVAILABLE, s.same_provider_retries, s.same_provider_backoff, rng),
            backoff_on(FailureKind.TRUNCATED, s.same_provider_retries, s.same_provider_backoff, rng),
            always(Action.NEXT_PROVIDER),
        )
    )
