"""The failover loop: try providers in priority order until one answers.

The only place where "which provider next" is decided. It asks the breaker gate
whether a provider may be called, asks the policy what a failure means, and records
every attempt. It owns no I/O of its own beyond sleeping between retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from flexitasks.config import ProviderSettings
from flexitasks.errors import AllProvidersFailed, ContentRejected, InvalidRequest, RequestRejected
from flexitasks.failover.classify import FailureKind, ProviderFailure, classify
from flexitasks.failover.policy import Action, FailoverPolicy
from flexitasks.models import Attempt, ChatRequest, ChatResult, Usage
from flexitasks.providers.base import ProviderAdapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Permit:
    provider: str
    probe: bool = False


class BreakerGate(Protocol):
    """What the router needs from circuit breakers (see ``flexitasks.breaker.gate``)."""

    def admit(self, provider: str) -> Permit | None: ...
    def succeeded(self, permit: Permit) -> None: ...
    def failed(self, permit: Permit, failure: ProviderFailure) -> None: ...
    def cool_down(self, provider: str, seconds: float) -> None: ...


class OpenGate:
    """No breakers: every provider is always admitted."""

    def admit(self, provider: str) -> Permit | None:
        return Permit(provider)

    def succeeded(self, permit: Permit) -> None:
        pass

    def failed(self, permit: Permit, failure: ProviderFailure) -> None:
        pass

    def cool_down(self, provider: str, seconds: float) -> None:
        pass


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

    def run(self, request: ChatRequest) -> ChatResult:
        start = self.clock()
        deadline = start + self.request_timeout
        attempts: list[Attempt] = []
        last_error: dict[str, str] = {}
        for provider in self.eligible(request):
            result = self._try_provider(provider, request, deadline, attempts, last_error)
            if result is not None:
                result.latency_ms = round((self.clock() - start) * 1000, 3)
                return result
            if self.clock() >= deadline:
                last_error.setdefault("(deadline)", f"request_timeout {self.request_timeout}s reached")
                break
        summary = "; ".join(f"{name}: {err}" for name, err in last_error.items()) or "no provider configured"
        raise AllProvidersFailed(f"all providers failed: {summary}")

    def _try_provider(
        self,
        provider: ProviderSettings,
        request: ChatRequest,
        deadline: float,
        attempts: list[Attempt],
        last_error: dict[str, str],
    ) -> ChatResult | None:
        retries = 0
        while True:
            permit = self.gate.admit(provider.name)
            if permit is None:
                attempts.append(Attempt(provider=provider.name, outcome="skipped", error="circuit open"))
                last_error.setdefault(provider.name, "skipped: circuit open")
                return None
            t0 = self.clock()
            try:
                completion = self.adapters[provider.name].complete(request, max(deadline - t0, 0.001))
            except Exception as exc:
                failure = classify(exc)
                latency = round((self.clock() - t0) * 1000, 3)
                attempts.append(Attempt(provider=provider.name, outcome="error", error=str(failure), latency_ms=latency))
                last_error[provider.name] = str(failure)
                self.gate.failed(permit, failure)
                decision = self.policy.decide(failure, retries)
                if decision.cool_down:
                    self.gate.cool_down(provider.name, decision.cool_down)
                self._log(provider, failure, decision.action)
                if decision.action is Action.FAIL_REQUEST:
                    error = ContentRejected if failure.kind is FailureKind.CONTENT_POLICY else RequestRejected
                    raise error(f"{provider.name} rejected the request: {failure.message}") from None
                if decision.action is Action.RETRY_SAME and self.clock() + decision.wait < deadline:
                    self.sleep(decision.wait)
                    retries += 1
                    continue
                return None
            self.gate.succeeded(permit)
            latency = round((self.clock() - t0) * 1000, 3)
            attempts.append(Attempt(provider=provider.name, outcome="ok", latency_ms=latency))
            return ChatResult(
                content=completion.content,
                provider=provider.name,
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

    @staticmethod
    def _log(provider: ProviderSettings, failure: ProviderFailure, action: Action) -> None:
        if failure.kind is FailureKind.MISCONFIGURED:
            log.error("provider %s is misconfigured (%s); failing over", provider.name, failure)
        else:
            log.warning("provider %s failed (%s); %s", provider.name, failure, action.value)
