"""The failover loop: try providers in priority order until one answers.

The only place where "which provider next" is decided. It asks the breaker gate
whether a provider may be called, asks the policy what a failure means, and records
every attempt. It owns no I/O of its own beyond sleeping between retries.

Time: one run has a deadline (``request_timeout`` from its start). No call starts at or
after it, every call's budget ends at it, and no wait crosses it. A provider that asked
for a pause (Retry-After) is cooled down fleet-wide through the gate; if every other
provider then fails or is skipped, the run waits for the earliest such cool-down to end,
when that is before the deadline, and tries that provider again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flexitasks.breaker.permit import BreakerGate, Permit
from flexitasks.config import ProviderSettings
from flexitasks.errors import AllProvidersFailed, ContentRejected, InvalidRequest, RequestRejected
from flexitasks.failover.classify import classify
from flexitasks.failover.policy import Action, FailoverPolicy
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import Attempt, ChatRequest, ChatResult, Usage
from flexitasks.providers.base import Completion, ProviderAdapter

log = logging.getLogger(__name__)

ADMIT_GRACE = 0.25
"""Seconds to keep asking for a provider whose cool-down is known to be over: the
breaker store's clock and ours differ by a few milliseconds, and another process may
hold the half-open probe for a moment."""
ADMIT_POLL = 0.02


@dataclass
class _Route:
    """One provider's standing within one run."""

    provider: ProviderSettings
    retries: int = 0  # calls after the first, across the whole run
    back_at: float | None = None  # cooling down until then (router clock); None: done for this run
    cooled: bool = False  # a cool-down we know of has ended: expect admission shortly


@dataclass
class _Run:
    deadline: float
    attempts: list[Attempt] = field(default_factory=list)
    last_error: dict[str, str] = field(default_factory=dict)
    refusal: str | None = None  # a content-policy refusal, when those fail over


class Router:
    def __init__(
        self,
        providers: Sequence[ProviderSettings],
        adapters: dict[str, ProviderAdapter],
        gate: BreakerGate,
        policy: FailoverPolicy,
        request_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.providers = sorted(providers, key=lambda p: p.priority)
        self.adapters = adapters
        self.gate = gate
        self.policy = policy
        self.request_timeout = request_timeout
        self.clock = clock
        self.sleep = sleep

    def eligible(self, request: ChatRequest) -> list[ProviderSettings]:
        if request.providers is None:
            return list(self.providers)
        known = {p.name for p in self.providers}
        unknown = [n for n in request.providers if n not in known]
        if unknown:
            raise InvalidRequest(f"invalid chat request: providers: unknown provider(s) {', '.join(unknown)}")
        return [p for p in self.providers if p.name in request.providers]

    def run(self, request: ChatRequest, timeout: float | None = None) -> ChatResult:
        """``timeout``: what is left of the request's own deadline, if shorter than
        ``request_timeout`` (a Celery retry of an earlier run)."""
        start = self.clock()
        limit = self.request_timeout if timeout is None else max(min(timeout, self.request_timeout), 0.0)
        run = _Run(deadline=start + limit)
        routes = [_Route(p) for p in self.eligible(request)]
        ready = list(routes)
        while True:
            for route in ready:
                if self.clock() >= run.deadline:
                    break
                result = self._try_route(route, request, run)
                if result is not None:
                    result.latency_ms = round((self.clock() - start) * 1000, 3)
                    return result
            if not self._wait_for_cooldown(routes, run):
                break
            now = self.clock()
            ready = [r for r in routes if r.back_at is not None and r.back_at <= now]
            for route in ready:
                route.cooled = True
        if self.clock() >= run.deadline:
            run.last_error.setdefault("(deadline)", f"request_timeout {self.request_timeout:g}s reached")
        if run.refusal is not None:
            raise ContentRejected(run.refusal)
        errors = run.last_error.items()
        summary = "; ".join(f"{name}: {err}" for name, err in errors) or "no provider configured"
        raise AllProvidersFailed(f"all providers failed: {summary}")

    def _wait_for_cooldown(self, routes: list[_Route], run: _Run) -> bool:
        """Nowhere else to go: sleep until the earliest cool-down ends, if before the deadline."""
        ends = [r.back_at for r in routes if r.back_at is not None]
        if not ends:
            return False
        wake = min(ends)
        if wake >= run.deadline:
            return False
        log.info("every provider failed or is cooling down; waiting %.2fs", wake - self.clock())
        self.sleep(max(wake - self.clock(), 0.0))
        return True

    def _admit(self, provider: str, run: _Run, patient: bool) -> Permit | None:
        permit = self.gate.admit(provider)
        if permit is not None or not patient:
            return permit
        until = min(self.clock() + ADMIT_GRACE, run.deadline)
        while permit is None and self.clock() + ADMIT_POLL < until:
            self.sleep(ADMIT_POLL)
            permit = self.gate.admit(provider)
        return permit

    def _reopens_in(self, provider: str) -> float | None:
        left = self.gate.reopens_in(provider)
        return left if left is not None and left > 0 else None

    def _try_route(self, route: _Route, request: ChatRequest, run: _Run) -> ChatResult | None:
        """Call one provider, retrying it as the policy says; None means try elsewhere."""
        provider = route.provider
        patient, route.cooled, route.back_at = route.cooled, False, None
        while True:
            if self.clock() >= run.deadline:
                return None
            permit = self._admit(provider.name, run, patient)
            if permit is None:
                left = self._reopens_in(provider.name)
                why = "circuit open" if left is None else f"cooling down, {left:.2f}s left"
                run.attempts.append(Attempt(provider=provider.name, outcome="skipped", error=why))
                run.last_error.setdefault(provider.name, f"skipped: {why}")
                if left is not None:
                    route.back_at = self.clock() + left
                return None
            t0 = self.clock()
            try:
                completion = self.adapters[provider.name].complete(request, max(run.deadline - t0, 0.001))
            except Exception as exc:
                failure = classify(exc)
                latency = round((self.clock() - t0) * 1000, 3)
                run.attempts.append(
                    Attempt(provider=provider.name, outcome="error", error=str(failure), latency_ms=latency)
                )
                run.last_error[provider.name] = str(failure)
                self.gate.failed(permit, failure)
                decision = self.policy.decide(failure, route.retries)
                cool_end = None
                if decision.cool_down:
                    self.gate.cool_down(provider.name, decision.cool_down)
                    cool_end = self.clock() + decision.cool_down
                self._log(provider, failure, decision.action)
                if decision.action is Action.FAIL_REQUEST:
                    error = ContentRejected if failure.kind is FailureKind.CONTENT_POLICY else RequestRejected
                    raise error(f"{provider.name} rejected the request: {failure.message}") from None
                if failure.kind is FailureKind.CONTENT_POLICY:
                    run.refusal = f"{provider.name} rejected the request: {failure.message}"
                if decision.action is Action.RETRY_SAME and self.clock() + decision.wait < run.deadline:
                    self.sleep(decision.wait)
                    route.retries += 1
                    patient = cool_end is not None
                    continue
                if cool_end is not None:  # may come back after the cool-down: that will be a retry
                    route.retries += 1
                    route.back_at = cool_end
                return None
            self.gate.succeeded(permit)
            latency = round((self.clock() - t0) * 1000, 3)
            run.attempts.append(Attempt(provider=provider.name, outcome="ok", latency_ms=latency))
            return _result(provider.name, completion, run.attempts)

    @staticmethod
    def _log(provider: ProviderSettings, failure: ProviderFailure, action: Action) -> None:
        if failure.kind is FailureKind.MISCONFIGURED:
            log.error("provider %s is misconfigured (%s); failing over", provider.name, failure)
        else:
            log.warning("provider %s failed (%s); %s", provider.name, failure, action.value)


def _result(provider: str, completion: Completion, attempts: list[Attempt]) -> ChatResult:
    """The contract's result: model and usage of the provider that answered, nothing else."""
    return ChatResult(
        content=completion.content,
        provider=provider,
        model=completion.model,
        finish_reason=completion.finish_reason,
        usage=Usage(
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            total_tokens=completion.input_tokens + completion.output_tokens,
        ),
        attempts=attempts,
        latency_ms=0.0,
    )
