"""The failover loop: try providers in priority order until one answers.

The only place where "which provider next" is decided. Providers go by priority (equal
priorities in a weighted order, ``limits.balance``). For each in turn it runs three
named steps: ``_admit`` (ask the breaker gate, then the fleet-wide limits), ``_call``
(one adapter call, recorded as an attempt) and ``_after_failure`` (ask the policy what
the failure means: retry here, go on, give up, or come back later). One ``RunState``
holds what a request has learned so far; it owns no I/O beyond pauses of at most
``INLINE_PAUSE_MAX``.

Time: one run has a deadline (``request_timeout`` from its start, or what is left of the
request's). No call starts at or after it and every call's budget ends at it. A wait
longer than ``INLINE_PAUSE_MAX`` (a Retry-After, a fleet cool-down, a long backoff) is
never slept here: the run ends with ``ComeBackLater(delay, state)`` and the caller
(``tasks.py``) re-queues the request to resume with that state after ``delay``.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from celery.exceptions import SoftTimeLimitExceeded
from pydantic import BaseModel, Field

from flexitasks import capabilities
from flexitasks.breaker.permit import BreakerGate, Permit
from flexitasks.config import ProviderSettings
from flexitasks.errors import AllProvidersFailed, ContentRejected, FlexitasksError, InvalidRequest, RequestRejected
from flexitasks.failover.policy import Action, Decision, FailoverPolicy
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.limits import balance
from flexitasks.limits.limiter import Limiter, Slot, estimate_tokens
from flexitasks.models import Attempt, ChatRequest, ChatResult, Outcome, Usage
from flexitasks.output import Answer, read_answer
from flexitasks.providers.base import Completion, ProviderAdapter
from flexitasks.providers.classify import classify

log = logging.getLogger(__name__)

INLINE_PAUSE_MAX = 0.5
"""Longest pause a run takes inline (a jittered backoff); anything longer comes back later."""
ADMIT_GRACE = 0.25
"""Seconds to keep asking for a provider whose cool-down is known to be over: the
breaker store's clock and ours differ by a few milliseconds, and another call may hold
the half-open probe for a moment."""
ADMIT_POLL = 0.02
BOOK_MARGIN = 0.02
"""Seconds a come-back for a booked slot waits past the slot: clocks of hosts differ a little."""


class AttemptStream(Protocol):
    """Where a streamed request's text goes (``streaming/sink.py``): a callback for each
    provider call, and word that a call failed (any text it sent is void)."""

    def attempt(self, provider: str) -> Callable[[str], None]: ...
    def failed(self, provider: str, reason: str) -> None: ...


class RunState(BaseModel):
    """What one request has learned across its runs; JSON, carried by a come-back."""

    attempts: list[Attempt] = Field(default_factory=list)
    retries: dict[str, int] = Field(default_factory=dict)  # calls after the first, per provider
    done: list[str] = Field(default_factory=list)  # providers not to call again for this request
    waiting: list[str] = Field(default_factory=list)  # providers the request came back for
    last_error: dict[str, str] = Field(default_factory=dict)
    refusal: str | None = None  # a content-policy refusal, when those fail over
    booked: dict[str, int] = Field(default_factory=dict)  # provider -> tokens of a slot booked for the come-back


class ComeBackLater(FlexitasksError):
    """No provider can serve the request now, but one can in ``delay`` seconds (before the
    deadline): re-queue it then, resuming with ``state``. Not a failure of the request."""

    def __init__(self, delay: float, state: RunState) -> None:
        super().__init__(f"come back in {delay:.2f}s", attempts=state.attempts)
        self.delay = delay
        self.state = state


@dataclass
class _Run:
    """One run: the request's state plus this run's own clock readings."""

    deadline: float
    state: RunState
    back_at: dict[str, float] = field(default_factory=dict)  # provider -> free again (router clock)
    slot: Slot | None = None  # the call in progress, admitted under its provider's limits
    limited: dict[str, int] = field(default_factory=dict)  # provider held back by limits -> tokens asked
    stream: AttemptStream | None = None  # the caller asked for the answer as it is produced

    def record(self, provider: str, outcome: Outcome, error: str | None = None, latency: float = 0.0,
               first_token_s: float | None = None) -> None:
        first_token_ms = round(first_token_s * 1000, 3) if first_token_s is not None else None
        self.state.attempts.append(Attempt(provider=provider, outcome=outcome, error=error, latency_ms=latency,
                                           first_token_ms=first_token_ms))


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
        limiter: Limiter | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.providers = sorted(providers, key=lambda p: p.priority)
        self._first_token_timeout = {p.name: p.first_token_timeout for p in providers}
        self.adapters = adapters
        self.gate = gate
        self.policy = policy
        self.request_timeout = request_timeout
        self.clock = clock
        self.sleep = sleep
        self.limiter = limiter
        self.rng = rng or random.Random()

    def eligible(self, request: ChatRequest) -> list[ProviderSettings]:
        if request.providers is None:
            return list(self.providers)
        known = {p.name for p in self.providers}
        unknown = [n for n in request.providers if n not in known]
        if unknown:
            raise InvalidRequest(f"invalid chat request: providers: unknown provider(s) {', '.join(unknown)}")
        return [p for p in self.providers if p.name in request.providers]

    def run(
        self,
        request: ChatRequest,
        timeout: float | None = None,
        resume: RunState | None = None,
        stream: AttemptStream | None = None,
    ) -> ChatResult:
        """Serve one request, or raise ``ComeBackLater`` / a ``FlexitasksError`` carrying
        ``.attempts``. ``timeout``: what is left of the request's own deadline, if shorter
        than ``request_timeout``; ``resume``: the state a ``ComeBackLater`` carried;
        ``stream``: gets each call's text as it arrives, and each failed call."""
        start = self.clock()
        limit = self.request_timeout if timeout is None else max(min(timeout, self.request_timeout), 0.0)
        state = resume.model_copy(deep=True) if resume else RunState()
        run = _Run(deadline=start + limit, state=state, stream=stream)
        providers, unfit = capabilities.split(self.eligible(request), request)
        if not providers and unfit:
            raise InvalidRequest(capabilities.none_left(request, unfit))
        for name, why in unfit.items() if resume is None else ():
            run.record(name, "skipped", why)
        headroom = self.limiter.headroom if self.limiter is not None else lambda _name: 1.0
        for provider in balance.order(providers, headroom, self.rng):
            if provider.name in run.state.done or self.clock() >= run.deadline:
                continue
            result = self._serve(provider, request, run)
            if result is not None:
                result.latency_ms = round((self.clock() - start) * 1000, 3)
                return result
        raise self._no_answer(run)

    # -- the steps ----------------------------------------------------------------------------
    def _serve(self, provider: ProviderSettings, request: ChatRequest, run: _Run) -> ChatResult | None:
        """Admit, call, after-failure, for as long as the policy says retry here; None: go on."""
        patient = provider.name in run.state.waiting
        while self.clock() < run.deadline:
            permit = self._admit(provider, request, run, patient)
            if permit is None:
                return None
            try:
                answer = self._call(provider.name, permit, request, run)
            except ProviderFailure as failure:
                decision = self._after_failure(provider, permit, failure, run)
                if decision is None:
                    return None
                patient = decision.cool_down is not None
                continue
            return _result(provider.name, answer, run.state.attempts)
        return None

    def _admit(self, settings: ProviderSettings, request: ChatRequest, run: _Run, patient: bool) -> Permit | None:
        """Ask the gate, then the limits; a provider whose cool-down just ended gets
        ``ADMIT_GRACE`` of polling. A refusal is recorded as a skipped attempt, with the
        reopen time if known."""
        provider = settings.name
        # Too little time left to wait for a first token: not the probe. Capped at half the
        # request's own limit, or a request_timeout <= first_token_timeout would never probe
        # and the breaker would stay open for good.
        probe_needs = min(self._first_token_timeout.get(provider, 0.0), self.request_timeout / 2)
        permit = self.gate.admit(provider, may_probe=run.deadline - self.clock() >= probe_needs)
        until = min(self.clock() + ADMIT_GRACE, run.deadline)
        while permit is None and patient and self.clock() + ADMIT_POLL < until:
            self.sleep(ADMIT_POLL)
            permit = self.gate.admit(provider, may_probe=run.deadline - self.clock() >= probe_needs)
        if permit is not None:
            return permit if self._within_limits(settings, request, run) else None
        left = self.gate.reopens_in(provider)
        left = left if left is not None and left > 0 else None
        why = "circuit open" if left is None else f"cooling down, {left:.2f}s left"
        run.record(provider, "skipped", why)
        run.state.last_error.setdefault(provider, f"skipped: {why}")
        if left is not None:
            run.back_at[provider] = self.clock() + left
        else:
            run.state.done.append(provider)
        return None

    def _within_limits(self, provider: ProviderSettings, request: ChatRequest, run: _Run) -> bool:
        """Take a slot under the provider's fleet-wide limits (no store call when it has
        none); over a limit it is skipped and the run may come back when the slot frees."""
        if self.limiter is None or not self.limiter.limited(provider.name):
            return True
        if provider.name in run.state.booked:  # this come-back's own slot
            run.slot = self.limiter.booked(provider.name, run.state.booked.pop(provider.name))
            return True
        tokens = estimate_tokens([m.content for m in request.messages], request.max_tokens or provider.max_tokens)
        got = self.limiter.admit(provider.name, tokens)
        if isinstance(got, Slot):
            run.slot = got
            return True
        why = f"rate limit: {got.limit}"
        run.record(provider.name, "skipped", why)
        run.state.last_error.setdefault(provider.name, f"skipped: {why}")
        run.back_at[provider.name] = self.clock() + got.retry_after
        run.limited[provider.name] = tokens
        return False

    def _book(self, run: _Run, now: float) -> None:
        """Nowhere to go now, and the earliest way back is a provider held back by its
        limits: book its next slot (one store call per come-back), so requests waiting for
        it are served in the order they asked, each coming back when its own slot is free."""
        if self.limiter is None or not run.limited:
            return
        name = min(run.limited, key=lambda n: run.back_at[n])
        if run.back_at[name] > min(run.back_at.values()):
            return
        booked = self.limiter.book(name, run.limited[name], run.deadline - now - BOOK_MARGIN)
        if booked is not None:
            run.back_at[name] = now + booked[0] + BOOK_MARGIN
            run.state.booked[name] = booked[1]

    def _release(self, run: _Run, completion: Completion | None, failure: ProviderFailure | None) -> None:
        """After a call: settle its tokens and free its in-flight lease. A 429 the limiter
        did not see coming is logged with its view, so limits set too high show."""
        slot, run.slot = run.slot, None
        if slot is None or self.limiter is None:
            return
        self.limiter.finished(slot, None if completion is None else completion.input_tokens + completion.output_tokens)
        if failure is not None and failure.kind is FailureKind.RATE_LIMITED:
            log.warning("provider %s answered 429 although its limits had room (limiter at admission: %s)",
                        slot.provider, self.limiter.describe(slot.provider, slot.view))

    def _call(self, provider: str, permit: Permit, request: ChatRequest, run: _Run) -> Answer:
        """One adapter call within the run's deadline, its answer checked (``output.py``);
        reports the outcome to the gate."""
        adapter, t0 = self.adapters[provider], self.clock()
        completion: Completion | None = None
        try:
            if run.stream is None:
                completion = adapter.complete(request, max(run.deadline - t0, 0.001))
            else:
                completion = adapter.complete(request, max(run.deadline - t0, 0.001), run.stream.attempt(provider))
            answer = read_answer(request, completion)
        except SoftTimeLimitExceeded:  # Celery is ending the task: not the provider's fault, nothing to report
            self._release(run, completion, None)
            run.record(provider, "error", "cut by the task's soft time limit", round((self.clock() - t0) * 1000, 3))
            raise
        except Exception as exc:
            failure = classify(exc)
            latency = round((self.clock() - t0) * 1000, 3)
            self._release(run, completion, failure)  # an answer that failed its check still used tokens
            run.record(provider, "error", str(failure), latency)
            run.state.last_error[provider] = str(failure)
            self.gate.failed(permit, failure)
            if run.stream is not None:
                run.stream.failed(provider, str(failure))
            raise failure from None
        self._release(run, completion, None)
        self.gate.succeeded(permit)
        run.record(provider, "ok", latency=round((self.clock() - t0) * 1000, 3),
                   first_token_s=getattr(completion, "first_token_s", None))
        return answer

    def _after_failure(
        self, provider: ProviderSettings, permit: Permit, failure: ProviderFailure, run: _Run
    ) -> Decision | None:
        """What the policy makes of a failure: the decision to retry here now (after a
        short inline pause), None to go on, or a raise (the request fails, or comes back)."""
        name = provider.name
        decision = self.policy.decide(failure, run.state.retries.get(name, 0))
        if decision.cool_down:
            self.gate.cool_down(name, decision.cool_down)
        self._log(provider, failure, decision.action)
        if decision.action is Action.FAIL_REQUEST:
            error = ContentRejected if failure.kind is FailureKind.CONTENT_POLICY else RequestRejected
            raise error(f"{name} rejected the request: {failure.message}", attempts=run.state.attempts)
        if failure.kind is FailureKind.CONTENT_POLICY:
            run.state.refusal = f"{name} rejected the request: {failure.message}"
        wait = decision.wait
        if decision.action is Action.RETRY_SAME and self.clock() + wait < run.deadline:
            run.state.retries[name] = run.state.retries.get(name, 0) + 1
            if wait > INLINE_PAUSE_MAX:  # the preferred provider is worth a come-back, not a held slot
                raise self._come_back(run, wait, [name])
            self.sleep(wait)
            return decision
        if decision.cool_down is not None:  # may come back after the cool-down: that will be a retry
            run.state.retries[name] = run.state.retries.get(name, 0) + 1
            run.back_at[name] = self.clock() + decision.cool_down
        else:
            run.state.done.append(name)
        return None

    # -- the end of a run without an answer -------------------------------------------------------
    def _no_answer(self, run: _Run) -> FlexitasksError:
        """Come back for the earliest known cool-down if it ends before the deadline; else fail."""
        now = self.clock()
        if run.back_at and now < run.deadline:
            self._book(run, now)
            wake = min(run.back_at.values())
            if wake < run.deadline:
                return self._come_back(run, max(wake - now, 0.0), [n for n, t in run.back_at.items() if t <= wake])
        if now >= run.deadline:
            run.state.last_error.setdefault("(deadline)", f"request_timeout {self.request_timeout:g}s reached")
        if run.state.refusal is not None:
            return ContentRejected(run.state.refusal, attempts=run.state.attempts)
        errors = run.state.last_error.items()
        summary = "; ".join(f"{name}: {err}" for name, err in errors) or "no provider configured"
        return AllProvidersFailed(f"all providers failed: {summary}", attempts=run.state.attempts)

    @staticmethod
    def _come_back(run: _Run, delay: float, waiting: list[str]) -> ComeBackLater:
        log.info("no provider free now; coming back in %.2fs for %s", delay, ", ".join(waiting))
        run.state.waiting = waiting
        return ComeBackLater(delay, run.state)

    @staticmethod
    def _log(provider: ProviderSettings, failure: ProviderFailure, action: Action) -> None:
        if failure.kind.needs_operator:
            log.error("provider %s needs its operator (%s); failing over", provider.name, failure)
        else:
            log.warning("provider %s failed (%s); %s", provider.name, failure, action.value)


def resume_state(carried: Any) -> RunState | None:
    """The ``RunState`` a re-queued request carries (JSON from a message header), if any."""
    return None if carried is None else RunState.model_validate(carried)


def _result(provider: str, answer: Answer, attempts: list[Attempt]) -> ChatResult:
    """The contract's result: model and usage of the provider that answered, nothing else."""
    completion = answer.completion
    return ChatResult(
        content=answer.content,
        tool_calls=answer.tool_calls,
        parsed=answer.parsed,
        provider=provider,
        model=completion.model,
        finish_reason=answer.finish_reason,
        usage=Usage(
            input_tokens=completion.input_tokens,
            output_tokens=completion.output_tokens,
            total_tokens=completion.input_tokens + completion.output_tokens,
        ),
        attempts=attempts,
        latency_ms=0.0,
    )
