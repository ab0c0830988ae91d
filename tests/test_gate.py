"""FleetGate's decisions: what reaches the shared store and when.

The shared store here is the in-memory store (the Lua's reference model, tested
against it in test_breaker_store_model.py); counting its calls is how the tests see
which decisions needed the store.
"""

from __future__ import annotations

from flexitasks.breaker.gate import FleetGate
from flexitasks.breaker.machine import Operation
from flexitasks.breaker.memory_store import MemoryBreakerStore
from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.store import BreakerPolicy, BreakerState, StoreResult
from flexitasks.failures import FailureKind, ProviderFailure

POLICY = BreakerPolicy(failure_threshold=5, failure_rate_threshold=0.5, window=60.0, recovery_timeout=10.0)
BOOM = ProviderFailure(FailureKind.UNAVAILABLE, "500", status=500)


class CountingStore(MemoryBreakerStore):
    def __init__(self) -> None:
        self.now = 1000.0
        super().__init__(clock=lambda: self.now)
        self.ops: list[str] = []

    def run(self, provider: str, policy: BreakerPolicy, op: Operation) -> StoreResult:
        self.ops.append(op.name)
        return super().run(provider, policy, op)


def make_gate(store: CountingStore) -> FleetGate:
    mirror = Mirror(["p"], clock=lambda: store.now)
    gate = FleetGate(store, mirror, {"p": POLICY})
    gate.set_degraded(False)
    mirror.load(store.snapshot(["p"]))
    store.ops.clear()
    return gate


def test_a_healthy_provider_costs_no_store_call():
    store = CountingStore()
    gate = make_gate(store)
    for _ in range(100):
        permit = gate.admit("p")
        assert permit is not None
        gate.succeeded(permit)
    assert store.ops == []


def test_successes_are_batched_while_the_window_holds_failures():
    store = CountingStore()
    gate = make_gate(store)
    gate.failed(gate.admit("p"), BOOM)
    assert store.ops == ["record_failure"]
    for _ in range(50):
        gate.succeeded(gate.admit("p"))
    successes = store.ops.count("record_success")
    assert successes <= 1  # batched (one per SUCCESS_FLUSH_INTERVAL), not one per call
    gate.failed(gate.admit("p"), BOOM)  # carries the successes not yet reported
    snap = store.snapshot(["p"])["p"]
    assert snap.failures == 2 and snap.calls == 52


def test_a_failing_provider_is_admitted_by_the_store():
    store = CountingStore()
    gate = make_gate(store)
    for _ in range(4):
        gate.failed(gate.admit("p"), BOOM)
    assert store.ops.count("admit") == 3  # after the first failure, every admission asks
    assert gate.mirror.get("p").snapshot.state is BreakerState.CLOSED
    store.ops.clear()
    # another process's failure opens it; this process has not heard yet
    store.record_failure("p", POLICY)
    assert gate.mirror.get("p").snapshot.state is BreakerState.CLOSED
    assert gate.admit("p") is None
    assert store.ops[-1] == "admit"


def test_a_bad_request_never_counts():
    store = CountingStore()
    gate = make_gate(store)
    for kind in (FailureKind.BAD_REQUEST, FailureKind.CONTEXT_LENGTH, FailureKind.CONTENT_POLICY):
        gate.failed(gate.admit("p"), ProviderFailure(kind, "no"))
    assert store.ops == []
