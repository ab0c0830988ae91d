"""Not the provider's fault (issue 11, item 4): a call cut by our own limit while the
provider was answering steadily never counts against the breaker nor decides a probe,
and a run with less time left than a first token may take is never made the probe."""

from __future__ import annotations

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from test_failover_units import Clock

from flexitasks.breaker.gate import FleetGate
from flexitasks.breaker.memory_store import MemoryBreakerStore
from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.permit import OpenGate, Permit
from flexitasks.breaker.store import BreakerPolicy, BreakerState
from flexitasks.config import ProviderSettings, RetrySettings
from flexitasks.failover.policy import default_policy
from flexitasks.failover.router import Router
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest
from flexitasks.providers.deadlines import StreamWatch

POLICY = BreakerPolicy(failure_threshold=1, failure_rate_threshold=0.5, window=60.0, recovery_timeout=10.0,
                       jitter=0.0)
PROVIDER = ProviderSettings(name="p", kind="openai", model="m", timeout=20.0, first_token_timeout=5.0,
                            stall_timeout=3.0)
BOOM = ProviderFailure(FailureKind.UNAVAILABLE, "500", status=500)


def watch_until_cut(budget: float, gap: float) -> ProviderFailure | None:
    """Tokens every ``gap`` seconds until the watch says a deadline passed."""
    clock = Clock()
    watch = StreamWatch(PROVIDER, budget, clock=clock)
    for _ in range(1000):
        clock.now += gap
        failure = watch.expired()
        if failure is not None:
            return failure
        watch.chunk(has_token=True)
    return None


def test_a_steady_stream_cut_by_the_requests_budget_or_the_providers_timeout_is_ours():
    by_budget = watch_until_cut(budget=8.0, gap=0.5)
    assert by_budget is not None and by_budget.ours and not by_budget.blames_provider
    assert "request deadline" in by_budget.message
    by_timeout = watch_until_cut(budget=100.0, gap=0.5)
    assert by_timeout is not None and by_timeout.ours and "provider timeout" in by_timeout.message


def test_a_stall_or_a_silent_provider_is_still_the_providers_fault():
    stalled = watch_until_cut(budget=100.0, gap=4.0)  # gaps longer than stall_timeout
    assert stalled is not None and not stalled.ours and stalled.blames_provider
    clock = Clock()
    silent = StreamWatch(PROVIDER, 100.0, clock=clock)
    clock.now += 6.0
    failure = silent.expired()
    assert failure is not None and "first token" in failure.message and failure.blames_provider


def fleet_gate() -> tuple[FleetGate, MemoryBreakerStore, Mirror, Clock]:
    """A gate over a memory store (breaker "p" closed) on a fake clock."""
    clock = Clock()
    store = MemoryBreakerStore(clock=clock)
    mirror = Mirror(["p"], clock=clock)
    gate = FleetGate(store, mirror, {"p": POLICY})
    gate.set_degraded(False)
    mirror.load(store.snapshot(["p"]))
    return gate, store, mirror, clock


def half_open_gate() -> tuple[FleetGate, MemoryBreakerStore, Clock]:
    gate, store, mirror, clock = fleet_gate()
    gate.failed(gate.admit("p"), BOOM)  # threshold 1: open
    assert mirror.get("p").snapshot.state is BreakerState.OPEN
    clock.now += 11.0  # past the recovery timeout: the next caller would be the probe
    return gate, store, clock


def test_a_run_with_too_little_time_left_is_never_made_the_probe():
    gate, store, _ = half_open_gate()
    assert gate.admit("p", may_probe=False) is None
    assert store.snapshot(["p"])["p"].probe_owner in (None, "")  # nobody holds the token
    permit = gate.admit("p", may_probe=True)
    assert permit is not None and permit.probe


def test_a_probe_cut_by_our_own_limit_neither_closes_nor_reopens_the_breaker():
    gate, store, _ = half_open_gate()
    permit = gate.admit("p")
    assert permit is not None and permit.probe
    before = store.snapshot(["p"])["p"]
    gate.failed(permit, ProviderFailure(FailureKind.TIMEOUT, "answer not complete within the request deadline",
                                        ours=True))
    after = store.snapshot(["p"])["p"]
    assert (after.state, after.generation) == (before.state, before.generation) == (BreakerState.HALF_OPEN,
                                                                                    before.generation)


def test_a_call_cut_by_our_own_limit_is_not_counted():
    gate, store, _, _ = fleet_gate()
    for _ in range(3):
        gate.failed(gate.admit("p"), ProviderFailure(FailureKind.TIMEOUT, "cut", ours=True))
    snap = store.snapshot(["p"])["p"]
    assert snap.state is BreakerState.CLOSED and snap.failures == 0


def test_celerys_soft_time_limit_is_not_blamed_on_the_provider():
    class Adapter:
        def complete(self, request: ChatRequest, budget: float, on_delta: object = None) -> object:
            raise SoftTimeLimitExceeded()

    class Gate(OpenGate):
        def __init__(self) -> None:
            self.blamed: list[ProviderFailure] = []

        def failed(self, permit: Permit, failure: ProviderFailure) -> None:
            self.blamed.append(failure)

    gate = Gate()
    router = Router([PROVIDER], {"p": Adapter()}, gate, default_policy(RetrySettings()), request_timeout=20)  # type: ignore[dict-item]
    with pytest.raises(SoftTimeLimitExceeded):
        router.run(ChatRequest.parse([{"role": "user", "content": "hi"}], {}))
    assert gate.blamed == []
