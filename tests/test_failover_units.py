"""The failover decisions without I/O: error classes, the policy's rules, the router's
loop (fake clock, scripted adapters, an in-memory gate) and the stream deadlines.

These pin the decision logic exactly (which call, when, how long a wait); the
end-to-end file checks the same rows against real SDKs, sockets and a real worker.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import anthropic
import httpx2
import openai
import pytest

from flexitasks.breaker.permit import Permit
from flexitasks.config import ProviderSettings, RetrySettings
from flexitasks.errors import AllProvidersFailed, ContentRejected, RequestRejected
from flexitasks.failover.policy import Action, backoff_wait, default_policy
from flexitasks.failover.router import ADMIT_GRACE, INLINE_PAUSE_MAX, ComeBackLater, Router, RunState, resume_state
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest, ChatResult
from flexitasks.providers.base import Completion
from flexitasks.providers.classify import classify, parse_retry_after, retry_after_from
from flexitasks.providers.deadlines import TAIL_GRACE, StreamWatch, http_timeout

RETRY = RetrySettings(
    same_provider_backoff=0.05, rate_limit_backoff=0.1, retry_after_wait_max=2.0, request_timeout=20.0
)
REQUEST = ChatRequest.parse([{"role": "user", "content": "hi"}], {})


def provider(name: str, priority: int, **kw: float) -> ProviderSettings:
    return ProviderSettings(name=name, kind="openai", model=f"{name}-model", priority=priority, **kw)


# ------------------------------------------------------------------ classify


def _openai_error(status: int, body: dict, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    request = httpx2.Request("POST", "http://fake/v1/chat/completions")
    response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    return openai.APIStatusError(f"Error code: {status}", response=response, body=body.get("error", body))


def _anthropic_error(
    status: int, message: str, headers: dict[str, str] | None = None
) -> anthropic.APIStatusError:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    request = httpx2.Request("POST", "http://fake/v1/messages")
    response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    return anthropic.APIStatusError(message, response=response, body=body)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (
            _openai_error(429, {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}),
            "rate_limited",
        ),
        (_openai_error(500, {"error": {"message": "boom"}}), "unavailable"),
        (_openai_error(503, {"error": {"message": "overloaded"}}), "unavailable"),
        (_anthropic_error(529, "Overloaded"), "unavailable"),
        (_openai_error(408, {"error": {"message": "timeout"}}), "unavailable"),
        (_openai_error(401, {"error": {"message": "bad key"}}), "misconfigured"),
        (_openai_error(404, {"error": {"message": "no model"}}), "misconfigured"),
        (
            _openai_error(400, {"error": {"message": "too long", "code": "context_length_exceeded"}}),
            "context_length",
        ),
        (_anthropic_error(400, "prompt is too long: 250000 tokens > 200000 maximum"), "context_length"),
        (_anthropic_error(413, "Request exceeds maximum size"), "context_length"),
        (
            _openai_error(400, {"error": {"message": "rejected", "code": "content_policy_violation"}}),
            "content_policy",
        ),
        (_anthropic_error(400, "Output blocked by content filtering policy"), "content_policy"),
        (_openai_error(400, {"error": {"message": "temperature must be <= 2"}}), "bad_request"),
        (openai.APITimeoutError(request=httpx2.Request("POST", "http://x")), "timeout"),
        (httpx2.ReadTimeout("read timed out"), "timeout"),
        (openai.APIConnectionError(request=httpx2.Request("POST", "http://x")), "unavailable"),
        (httpx2.RemoteProtocolError("peer closed connection"), "unavailable"),
        (ValueError("Expecting value: line 1 column 1 (char 0)"), "unavailable"),
    ],
)
def test_classify_maps_each_error_to_its_class(exc: BaseException, kind: str) -> None:
    assert classify(exc).kind.value == kind


def test_only_outages_blame_the_provider() -> None:
    blamed = {k for k in FailureKind if k.blames_provider}
    assert blamed == {
        FailureKind.UNAVAILABLE,
        FailureKind.RATE_LIMITED,
        FailureKind.TIMEOUT,
        FailureKind.TRUNCATED,
    }


def test_retry_after_forms() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    date = email.utils.formatdate(1_000_030.0, usegmt=True)
    assert parse_retry_after(date, now=1_000_000.0) == pytest.approx(30.0)
    assert parse_retry_after(date, now=1_000_100.0) == 0.0  # a date in the past: go now
    assert retry_after_from({"retry-after-ms": "1500", "retry-after": "2"}) == 1.5
    exc = _openai_error(429, {"error": {"message": "slow"}}, {"retry-after": "3"})
    assert classify(exc).retry_after == 3.0


# ------------------------------------------------------------------ policy


def failure(kind: FailureKind, retry_after: float | None = None) -> ProviderFailure:
    return ProviderFailure(kind, "x", retry_after=retry_after)


def test_policy_one_rule_per_row() -> None:
    policy = default_policy(RETRY, random.Random(1))
    decide = policy.decide
    assert decide(failure(FailureKind.CONTENT_POLICY), 0).action is Action.FAIL_REQUEST
    assert decide(failure(FailureKind.BAD_REQUEST), 0).action is Action.FAIL_REQUEST
    for kind in (FailureKind.CONTEXT_LENGTH, FailureKind.MISCONFIGURED, FailureKind.TIMEOUT):
        assert decide(failure(kind), 0).action is Action.NEXT_PROVIDER
    # 500 / cut stream: one retry on the same provider, then elsewhere
    for kind in (FailureKind.UNAVAILABLE, FailureKind.TRUNCATED):
        first = decide(failure(kind), 0)
        assert first.action is Action.RETRY_SAME and 0.025 <= first.wait <= 0.05
        assert decide(failure(kind), 1).action is Action.NEXT_PROVIDER
    # 429 without Retry-After: rate_limit_attempts calls in all, spaced by a growing floor
    waits = [decide(failure(FailureKind.RATE_LIMITED), r) for r in range(3)]
    assert [d.action for d in waits] == [Action.RETRY_SAME, Action.RETRY_SAME, Action.NEXT_PROVIDER]
    assert 0.05 <= waits[0].wait <= 0.1 and 0.1 <= waits[1].wait <= 0.2
    # Retry-After: short is waited out once, long fails over; both cool the provider down
    short = decide(failure(FailureKind.RATE_LIMITED, 1.5), 0)
    assert (short.action, short.wait, short.cool_down) == (Action.RETRY_SAME, 1.5, 1.5)
    again = decide(failure(FailureKind.RATE_LIMITED, 1.5), 1)
    assert (again.action, again.cool_down) == (Action.NEXT_PROVIDER, 1.5)
    long = decide(failure(FailureKind.RATE_LIMITED, 30), 0)
    assert (long.action, long.wait, long.cool_down) == (Action.NEXT_PROVIDER, 0.0, 30)
    assert decide(failure(FailureKind.UNAVAILABLE, 1.0), 0).cool_down == 1.0  # 503 + Retry-After
    zero = decide(failure(FailureKind.RATE_LIMITED, 0.0), 0)
    assert zero.cool_down is None and zero.action is Action.RETRY_SAME and zero.wait >= 0.05


def test_content_policy_failover_is_opt_in() -> None:
    policy = default_policy(RetrySettings(content_policy_failover=True))
    assert policy.decide(failure(FailureKind.CONTENT_POLICY), 0).action is Action.NEXT_PROVIDER
    assert policy.decide(failure(FailureKind.BAD_REQUEST), 0).action is Action.FAIL_REQUEST


@pytest.mark.parametrize("retries", [0, 1, 2, 3])
def test_backoff_is_exponential_with_a_floor(retries: int) -> None:
    rng = random.Random(retries)
    for _ in range(200):
        wait = backoff_wait(0.5, retries, rng.random())
        assert 0.25 * 2**retries <= wait <= 0.5 * 2**retries


def test_defaults_bound_the_rate_at_a_rate_limited_provider() -> None:
    """Documented default: one request's three 429 attempts are spread over at least 0.75 s."""
    s = RetrySettings()
    floor = sum(backoff_wait(s.rate_limit_backoff, r, 0.0) for r in range(s.rate_limit_attempts - 1))
    assert s.rate_limit_attempts == 3 and floor >= 0.75


# ------------------------------------------------------------------ router


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


Outcome = ProviderFailure | Completion | Callable[[], Completion]


@dataclass
class Script:
    """A fake adapter: each call takes ``took`` seconds of fake time, then plays the next outcome."""

    name: str
    clock: Clock
    outcomes: list[Outcome]
    took: float = 0.01
    calls: list[tuple[float, float]] = field(default_factory=list)  # (start, budget)

    def complete(self, request: ChatRequest, budget: float) -> Completion:
        self.calls.append((self.clock.now, budget))
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        self.clock.now += min(self.took, budget)
        if isinstance(outcome, ProviderFailure):
            raise outcome
        return outcome() if callable(outcome) else outcome


class Gate:
    """In-memory gate with fleet cool-downs; ``knows_reopen`` adds the optional reopens_in."""

    def __init__(self, clock: Clock, knows_reopen: bool = False) -> None:
        self.clock = clock
        self.until: dict[str, float] = {}
        self.blamed: list[tuple[str, FailureKind]] = []
        self.cooldowns: list[tuple[str, float]] = []
        self.knows_reopen = knows_reopen

    def reopens_in(self, provider: str) -> float | None:
        if not self.knows_reopen:
            return None
        return max(self.until.get(provider, 0.0) - self.clock(), 0.0) or None

    def admit(self, provider: str, may_probe: bool = True) -> Permit | None:
        return None if self.clock() < self.until.get(provider, 0.0) else Permit(provider)

    def succeeded(self, permit: Permit) -> None:
        pass

    def failed(self, permit: Permit, failure: ProviderFailure) -> None:
        if failure.kind.blames_provider:
            self.blamed.append((permit.provider, failure.kind))

    def cool_down(self, provider: str, seconds: float) -> None:
        self.cooldowns.append((provider, seconds))
        self.until[provider] = max(self.until.get(provider, 0.0), self.clock() + seconds)


def answer(name: str) -> Completion:
    return Completion(f"{name}: hi", f"{name}-model", "stop", input_tokens=3, output_tokens=2)


def make_router(
    clock: Clock, primary: list[Outcome], secondary: list[Outcome], gate: Gate | None = None, **kw: object
) -> tuple[Router, Script, Script, Gate]:
    p, s = Script("primary", clock, primary), Script("secondary", clock, secondary)
    gate = gate or Gate(clock)
    settings = RetrySettings(**{**RETRY.model_dump(), **kw})
    router = Router(
        [provider("secondary", 2), provider("primary", 1)],
        {"primary": p, "secondary": s},
        gate,
        default_policy(settings, random.Random(7)),
        request_timeout=settings.request_timeout,
        clock=clock,
        sleep=clock.sleep,
    )
    return router, p, s, gate


class Requeue:
    """Celery's part in a come-back: wait the countdown off the worker, run again with the state."""

    def __init__(self, router: Router, clock: Clock) -> None:
        self.router, self.clock = router, clock
        self.comebacks: list[float] = []

    def __call__(self, request: ChatRequest = REQUEST) -> ChatResult:
        deadline = self.clock.now + self.router.request_timeout
        state: RunState | None = None
        while True:
            try:
                return self.router.run(request, timeout=deadline - self.clock.now, resume=state)
            except ComeBackLater as later:
                assert self.clock.now + later.delay < deadline
                self.comebacks.append(later.delay)
                self.clock.now += later.delay
                state = resume_state(later.state.model_dump(mode="json"))  # as a header carries it
            finally:
                assert all(pause <= INLINE_PAUSE_MAX for pause in self.clock.sleeps)


def serve(router: Router, clock: Clock) -> ChatResult:
    return Requeue(router, clock)()


def starts(script: Script) -> list[float]:
    return [t for t, _ in script.calls]


def test_500_once_is_retried_on_the_primary_after_a_short_pause() -> None:
    clock = Clock()
    router, p, s, _ = make_router(clock, [failure(FailureKind.UNAVAILABLE), answer("primary")], [answer("x")])
    result = serve(router, clock)
    assert result.provider == "primary" and len(p.calls) == 2 and not s.calls
    assert 0.025 <= starts(p)[1] - starts(p)[0] - p.took <= 0.05
    assert [a.outcome for a in result.attempts] == ["error", "ok"]


def test_short_retry_after_is_waited_out_off_the_worker_and_cools_the_fleet() -> None:
    clock = Clock()
    rl = failure(FailureKind.RATE_LIMITED, 1.5)
    router, p, s, gate = make_router(clock, [rl, answer("primary")], [answer("secondary")])
    requeue = Requeue(router, clock)
    result = requeue()
    assert result.provider == "primary" and not s.calls
    assert gate.cooldowns == [("primary", 1.5)]
    assert starts(p)[1] - starts(p)[0] >= 1.5
    assert requeue.comebacks == [1.5] and clock.sleeps == []  # the run ended; Celery waited
    assert [a.outcome for a in result.attempts] == ["error", "ok"]  # both runs' attempts


def test_a_long_backoff_comes_back_with_its_retries_counted_then_fails_over() -> None:
    clock = Clock()
    router, p, _s, _ = make_router(
        clock, [failure(FailureKind.RATE_LIMITED)], [answer("secondary")], rate_limit_backoff=2.0
    )
    requeue = Requeue(router, clock)
    assert requeue().provider == "secondary"
    assert len(p.calls) == RETRY.rate_limit_attempts and len(requeue.comebacks) == RETRY.rate_limit_attempts - 1
    assert all(delay > INLINE_PAUSE_MAX for delay in requeue.comebacks)


def test_errors_the_router_raises_carry_the_attempts() -> None:
    clock = Clock()
    router, _p, _s, _ = make_router(clock, [failure(FailureKind.TIMEOUT)], [failure(FailureKind.MISCONFIGURED)])
    with pytest.raises(AllProvidersFailed) as info:
        serve(router, clock)
    assert [(a.provider, a.outcome) for a in info.value.attempts] == [("primary", "error"), ("secondary", "error")]
    router, _p, _s, _ = make_router(clock, [failure(FailureKind.BAD_REQUEST)], [answer("secondary")])
    with pytest.raises(RequestRejected) as rejected:
        serve(router, clock)
    assert [a.provider for a in rejected.value.attempts] == ["primary"]


def test_long_retry_after_fails_over_at_once() -> None:
    clock = Clock()
    router, p, _s, gate = make_router(clock, [failure(FailureKind.RATE_LIMITED, 30)], [answer("secondary")])
    result = serve(router, clock)
    assert result.provider == "secondary" and len(p.calls) == 1
    assert gate.cooldowns == [("primary", 30)] and clock.sleeps == []
    assert result.attempts[0].error.startswith("rate_limited")


def test_long_retry_after_with_nowhere_to_go_waits_for_the_cooldown() -> None:
    clock = Clock()
    rl = failure(FailureKind.RATE_LIMITED, 5.0)
    router, p, s, _ = make_router(clock, [rl, answer("primary")], [failure(FailureKind.TIMEOUT)])
    requeue = Requeue(router, clock)
    result = requeue()
    assert result.provider == "primary"
    assert len(p.calls) == 2 and len(s.calls) == 1
    assert starts(p)[1] - starts(p)[0] >= 5.0
    assert len(requeue.comebacks) == 1 and max(clock.sleeps, default=0.0) <= INLINE_PAUSE_MAX
    assert clock.now - 1000.0 < RETRY.request_timeout


def test_retry_after_past_the_deadline_gives_up_without_waiting() -> None:
    clock = Clock()
    rl = failure(FailureKind.RATE_LIMITED, 60.0)
    router, p, _s, _ = make_router(clock, [rl], [failure(FailureKind.UNAVAILABLE)])
    with pytest.raises(AllProvidersFailed) as info:
        serve(router, clock)
    assert "primary: rate_limited" in str(info.value) and "secondary: unavailable" in str(info.value)
    assert len(p.calls) == 1 and sum(clock.sleeps) < 1.0


def test_a_provider_that_keeps_asking_for_time_is_called_once_per_cooldown() -> None:
    clock = Clock()
    router, p, s, _ = make_router(
        clock,
        [failure(FailureKind.RATE_LIMITED, 3.0)],
        [failure(FailureKind.UNAVAILABLE)],
        request_timeout=10.0,
    )
    with pytest.raises(AllProvidersFailed):
        serve(router, clock)
    gaps = [b - a for a, b in zip(starts(p), starts(p)[1:], strict=False)]
    assert gaps and all(g >= 3.0 for g in gaps)
    assert len(s.calls) == 2  # secondary: one retry, and not again
    assert clock.now - 1000.0 <= 10.0


def test_cooldown_set_elsewhere_is_waited_for_when_the_gate_knows_it() -> None:
    clock = Clock()
    gate = Gate(clock, knows_reopen=True)
    gate.until["primary"] = clock.now + 4.0  # another process saw Retry-After: 4
    router, p, _s, _ = make_router(clock, [answer("primary")], [failure(FailureKind.TIMEOUT)], gate=gate)
    result = serve(router, clock)
    assert result.provider == "primary" and starts(p)[0] >= 1004.0
    assert [a.outcome for a in result.attempts] == ["skipped", "error", "ok"]
    assert "cooling down" in (result.attempts[0].error or "")


def test_skipped_without_a_known_reopen_time_fails_at_once() -> None:
    clock = Clock()
    gate = Gate(clock)
    gate.until["primary"] = clock.now + 4.0
    router, p, _s, _ = make_router(clock, [answer("primary")], [failure(FailureKind.TIMEOUT)], gate=gate)
    with pytest.raises(AllProvidersFailed, match="skipped: circuit open"):
        serve(router, clock)
    assert not p.calls and clock.sleeps == []


def test_own_cooldown_is_admitted_despite_a_little_clock_skew() -> None:
    clock = Clock()
    gate = Gate(clock)
    real_cool_down = gate.cool_down
    gate.cool_down = lambda p, s: real_cool_down(p, s + 0.1)  # the store's clock runs 100 ms ahead
    rl = failure(FailureKind.RATE_LIMITED, 1.0)
    router, _p, s, _ = make_router(clock, [rl, answer("primary")], [answer("secondary")], gate=gate)
    assert serve(router, clock).provider == "primary" and not s.calls
    assert ADMIT_GRACE > 0.1


def test_a_fresh_run_may_probe_even_when_request_timeout_is_not_above_first_token_timeout() -> None:
    clock = Clock()
    asked: list[bool] = []

    class RecordingGate(Gate):
        def admit(self, provider: str, may_probe: bool = True) -> Permit | None:
            asked.append(may_probe)
            return super().admit(provider, may_probe)

    p = provider("primary", 1, first_token_timeout=5.0)
    router = Router([p], {"primary": Script("primary", clock, [answer("primary")])}, RecordingGate(clock),
                    default_policy(RETRY, random.Random(7)), request_timeout=5.0, clock=clock, sleep=clock.sleep)
    assert router.run(REQUEST).provider == "primary"
    assert asked == [True]  # else a breaker whose probe needs such a run would never close
    router.run(REQUEST, timeout=1.0)  # a retry with 1 s left of 5: too little to be the probe
    assert asked == [True, False]


def test_silent_provider_is_not_retried_and_the_answer_comes_from_the_next() -> None:
    clock = Clock()
    router, p, _s, gate = make_router(clock, [failure(FailureKind.TIMEOUT)], [answer("secondary")])
    result = serve(router, clock)
    assert len(p.calls) == 1 and result.provider == "secondary"
    assert result.model == "secondary-model" and result.usage.total_tokens == 5
    assert [(a.provider, a.outcome) for a in result.attempts] == [("primary", "error"), ("secondary", "ok")]
    assert result.attempts[0].error.startswith("timeout")
    assert gate.blamed == [("primary", FailureKind.TIMEOUT)]


def test_nothing_starts_after_the_deadline_and_no_budget_crosses_it() -> None:
    clock = Clock()
    slow = failure(FailureKind.TIMEOUT)
    router, p, s, _ = make_router(clock, [slow], [failure(FailureKind.UNAVAILABLE)], request_timeout=5.0)
    p.took = s.took = 3.0  # each call burns 3 s of a 5 s request
    with pytest.raises(AllProvidersFailed, match="request_timeout"):
        serve(router, clock)
    end = 1000.0 + 5.0
    for script in (p, s):
        for t, budget in script.calls:
            assert t < end and t + budget <= end + 1e-9
    assert clock.now <= end + 1e-9
    assert len(s.calls) == 1  # its retry would start at the deadline: not made


def test_context_length_fails_over_without_blame() -> None:
    clock = Clock()
    router, p, _s, gate = make_router(clock, [failure(FailureKind.CONTEXT_LENGTH)], [answer("secondary")])
    assert serve(router, clock).provider == "secondary"
    assert len(p.calls) == 1 and gate.blamed == []


def test_content_policy_fails_the_request_without_failover() -> None:
    clock = Clock()
    refusal = ProviderFailure(FailureKind.CONTENT_POLICY, "Your request was rejected by our safety system.")
    router, p, s, gate = make_router(clock, [refusal], [answer("secondary")])
    with pytest.raises(ContentRejected, match="safety system"):
        serve(router, clock)
    assert len(p.calls) == 1 and not s.calls and gate.blamed == []


def test_other_bad_requests_fail_without_failover() -> None:
    clock = Clock()
    router, _p, s, _ = make_router(clock, [failure(FailureKind.BAD_REQUEST)], [answer("secondary")])
    with pytest.raises(RequestRejected):
        serve(router, clock)
    assert not s.calls


def test_content_policy_failover_when_configured() -> None:
    clock = Clock()
    refusal = ProviderFailure(FailureKind.CONTENT_POLICY, "blocked")
    router, _p, _s, _ = make_router(clock, [refusal], [answer("secondary")], content_policy_failover=True)
    assert serve(router, clock).provider == "secondary"
    router, _p, _s, _ = make_router(clock, [refusal], [refusal], content_policy_failover=True)
    with pytest.raises(ContentRejected, match="blocked"):
        serve(router, clock)


# ------------------------------------------------------------------ stream deadlines


class Tick:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watch(budget: float = 100.0) -> tuple[StreamWatch, Tick]:
    tick = Tick()
    settings = provider("p", 1, timeout=10.0, first_token_timeout=1.5, stall_timeout=1.0)
    return StreamWatch(settings, budget, clock=tick), tick


def test_watch_phases() -> None:
    w, tick = watch()
    assert w.remaining() == pytest.approx(1.5)  # waiting for the first token
    tick.now = 1.0
    w.chunk(False)  # role chunk / ping: not a token
    assert w.remaining() == pytest.approx(0.5)  # still counted from the start
    tick.now = 1.2
    w.chunk(True)
    assert w.remaining() == pytest.approx(1.0)  # stall limit from the last chunk
    tick.now = 2.1
    w.chunk(True)
    assert w.expired() is None
    tick.now = 3.2
    failure = w.expired()
    assert failure is not None and failure.kind is FailureKind.TIMEOUT and "stall" in failure.message
    with pytest.raises(ProviderFailure, match="stall"):
        w.chunk(True)


def test_watch_first_token_late_and_trickle() -> None:
    w, tick = watch()
    tick.now = 1.4
    w.chunk(False)
    tick.now = 1.6  # a keep-alive after the first-token deadline does not save it
    with pytest.raises(ProviderFailure, match="first token"):
        w.chunk(False)


def test_watch_total_deadline_and_tail() -> None:
    w, tick = watch(budget=2.0)
    tick.now = 0.5
    w.chunk(True)
    tick.now = 1.4
    w.chunk(True)
    assert w.remaining() == pytest.approx(0.6)  # the request budget cuts the stall allowance
    tick.now = 2.0
    assert "request deadline" in w.expired().message  # type: ignore[union-attr]
    w2, tick2 = watch()
    tick2.now = 0.3
    w2.chunk(True)
    w2.complete()
    assert w2.remaining() == pytest.approx(TAIL_GRACE)
    tick2.now = 5.0
    assert w2.expired() is None  # a missing end-of-stream marker is no failure


def test_watch_turns_a_socket_timeout_into_the_phase_verdict() -> None:
    w, tick = watch()
    tick.now = 1.5
    verdict = w.failure(httpx2.ReadTimeout("timed out"))
    assert verdict.kind is FailureKind.TIMEOUT and "first_token_timeout" in verdict.message
    w2, _ = watch()
    assert w2.failure(httpx2.RemoteProtocolError("closed")).kind is FailureKind.UNAVAILABLE


def test_socket_timeouts_are_separate_and_bounded() -> None:
    settings = provider("p", 1, timeout=10.0, connect_timeout=1.0, first_token_timeout=1.5, stall_timeout=1.0)
    t = http_timeout(settings, budget=20.0)
    assert (t.connect, t.read, t.write) == (1.0, 1.5, 10.0)
    t = http_timeout(settings, budget=0.7)
    assert (t.connect, t.read, t.write) == (0.7, 0.7, 0.7)
