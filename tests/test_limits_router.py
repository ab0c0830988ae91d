"""The router under fleet-wide limits, with a fake clock and scripted adapters.

The limiter runs on ``MemoryLimiterBackend`` (the model of the Lua) on the same fake
clock, so a come-back lands exactly on the slot the limiter named.
"""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest
from conftest import log_records
from test_failover_units import RETRY, Clock, Gate, Requeue, Script, answer, failure, provider

from flexitasks.failover.policy import default_policy
from flexitasks.failover.router import BOOK_MARGIN, ComeBackLater, Router
from flexitasks.failures import FailureKind
from flexitasks.limits import LimitPolicy, MemoryLimiterBackend
from flexitasks.limits.limiter import Limiter
from flexitasks.models import ChatRequest

REQUEST = ChatRequest.parse([{"role": "user", "content": "hi"}], {"max_tokens": 10})
ONLY = ChatRequest.parse([{"role": "user", "content": "hi"}], {"providers": ["primary"]})


def limited_router(clock: Clock, policies: dict[str, LimitPolicy], primary: list, secondary: list,
                   providers: list | None = None) -> tuple[Router, Script, Script, Limiter]:
    p, s = Script("primary", clock, primary), Script("secondary", clock, secondary)
    limiter = Limiter(policies, MemoryLimiterBackend(clock), clock=clock)
    router = Router(
        providers or [provider("primary", 1), provider("secondary", 2)],
        {"primary": p, "secondary": s},
        Gate(clock),
        default_policy(RETRY, random.Random(7)),
        request_timeout=RETRY.request_timeout,
        clock=clock,
        sleep=clock.sleep,
        limiter=limiter,
        rng=random.Random(3),
    )
    return router, p, s, limiter


def test_over_rpm_the_provider_is_skipped_and_the_next_answers() -> None:
    clock = Clock()
    router, _, _, _ = limited_router(clock, {"primary": LimitPolicy(rpm=60.0, burst=1.0)},
                                     [answer("primary")], [answer("secondary")])
    assert router.run(REQUEST).provider == "primary"
    result = router.run(REQUEST)
    assert result.provider == "secondary"
    assert [(a.provider, a.outcome, a.error) for a in result.attempts] == [
        ("primary", "skipped", "rate limit: rpm"), ("secondary", "ok", None)]


def test_with_nowhere_else_to_go_the_run_books_the_free_slot_and_comes_back_for_it() -> None:
    clock = Clock()
    router, p, _, _ = limited_router(clock, {"primary": LimitPolicy(rpm=60.0, burst=1.0)},
                                     [answer("primary")], [answer("secondary")])
    router.run(ONLY)
    with pytest.raises(ComeBackLater) as later:
        router.run(ONLY)
    assert later.value.delay == pytest.approx(1.0 - 0.01 + BOOK_MARGIN)  # the first call took 0.01 s
    assert later.value.state.booked == {"primary": 0}
    requeue = Requeue(router, clock)
    result = requeue(ONLY)
    assert result.provider == "primary" and len(requeue.comebacks) == 1 and len(p.calls) == 2
    assert [a.outcome for a in result.attempts] == ["skipped", "ok"]  # the booked slot is not checked again


def test_requests_waiting_for_a_limited_provider_come_back_in_the_order_they_asked() -> None:
    clock = Clock()
    router, _, _, _ = limited_router(clock, {"primary": LimitPolicy(rpm=60.0, burst=1.0)},
                                     [answer("primary")], [answer("secondary")])
    router.run(ONLY)
    delays = []
    for _ in range(3):
        with pytest.raises(ComeBackLater) as later:
            router.run(ONLY)
        delays.append(later.value.delay)
    assert delays == pytest.approx([0.99 + BOOK_MARGIN, 1.99 + BOOK_MARGIN, 2.99 + BOOK_MARGIN])


def test_tokens_are_settled_with_the_real_usage_and_the_lease_freed() -> None:
    clock = Clock()
    policy = LimitPolicy(tpm=1000, max_in_flight=1)
    router, _, _, limiter = limited_router(clock, {"primary": policy}, [answer("primary")], [answer("x")])
    router.run(REQUEST)
    view = limiter.backend.peek(["primary"])["primary"]
    assert view.used(policy)["tpm"] == pytest.approx(5, abs=0.2)  # 3 in + 2 out (less 0.01 s of refill)
    assert view.in_flight == 0


def test_a_failed_call_frees_its_lease_and_keeps_its_reservation() -> None:
    clock = Clock()
    policy = LimitPolicy(tpm=1000, max_in_flight=1)
    router, _, _, limiter = limited_router(clock, {"primary": policy},
                                           [failure(FailureKind.CONTEXT_LENGTH)], [answer("secondary")])
    assert router.run(REQUEST).provider == "secondary"
    view = limiter.backend.peek(["primary"])["primary"]
    assert view.in_flight == 0 and view.used(policy)["tpm"] > 10


def test_a_429_the_limiter_did_not_expect_is_logged_with_its_view() -> None:
    clock = Clock()
    router, _, _, _ = limited_router(clock, {"primary": LimitPolicy(rpm=600.0, burst=10.0)},
                                     [failure(FailureKind.RATE_LIMITED, retry_after=30.0)], [answer("secondary")])
    with log_records("flexitasks.failover.router", logging.WARNING) as records:
        assert router.run(REQUEST).provider == "secondary"
    expected = "provider primary answered 429 although its limits had room (limiter at admission: rpm 1.0/10 in use)"
    assert expected in [r.getMessage() for r in records]


def test_equal_priorities_share_first_tries_by_weight() -> None:
    clock = Clock()
    providers = [provider("primary", 1, weight=3.0), provider("secondary", 1)]
    router, _, _, _ = limited_router(clock, {}, [answer("primary")], [answer("secondary")], providers)
    served = Counter(router.run(REQUEST).provider for _ in range(2000))
    assert 0.72 < served["primary"] / 2000 < 0.78
