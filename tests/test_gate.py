"""FleetGate's decisions: what reaches the shared store and when.

The shared store here is the in-memory store (the Lua's reference model, tested
against it in test_breaker_store_model.py); counting its calls is how the tests see
which decisions needed the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flexitasks.breaker.gate import FleetGate
from flexitasks.breaker.machine import Operation
from flexitasks.breaker.memory_store import MemoryBreakerStore
from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.permit import Permit
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


# -- one gate, many threads (--pool threads) ----------------------------------------------------------
def run_threads(n: int, work: Callable[[int], Permit | None]) -> list[Permit | None]:
    barrier = threading.Barrier(n)
    results: list[Permit | None] = [None] * n

    def one(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_a_recovering_provider_gets_one_probe_from_a_process_of_many_threads():
    store = CountingStore()
    gate = make_gate(store)
    for _ in range(POLICY.failure_threshold):
        store.record_failure("p", POLICY)  # opened by the fleet
    gate.mirror.load(store.snapshot(["p"]))  # as the sync thread tells this process
    store.now += POLICY.recovery_timeout  # the open interval has passed

    permits = [p for p in run_threads(128, lambda _i: gate.admit("p")) if p is not None]
    assert [p.probe for p in permits] == [True]  # one call of 128, not one per thread
    assert gate.admit("p") is None  # the probe is in flight: nobody else goes
    gate.succeeded(permits[0])
    assert store.snapshot(["p"])["p"].state is BreakerState.CLOSED


def test_only_the_probing_call_can_report_the_probe():
    store = CountingStore()
    gate = make_gate(store)
    for _ in range(POLICY.failure_threshold):
        store.record_failure("p", POLICY)
    gate.mirror.load(store.snapshot(["p"]))
    store.now += POLICY.recovery_timeout
    probe = gate.admit("p")
    assert probe is not None and probe.probe and probe.owner is not None
    gate.succeeded(Permit("p", probe=True, owner=f"{gate.owner}:0"))  # another call of this process
    assert store.snapshot(["p"])["p"].state is BreakerState.HALF_OPEN
    gate.failed(probe, BOOM)
    assert store.snapshot(["p"])["p"].state is BreakerState.OPEN


def test_successes_from_many_threads_are_all_counted():
    store = CountingStore()
    gate = make_gate(store)
    gate.failed(gate.admit("p"), BOOM)  # the window holds a failure: successes are reported

    def succeed(_i: int) -> None:
        for _ in range(100):
            permit = gate.admit("p")
            assert permit is not None
            gate.succeeded(permit)

    run_threads(32, succeed)
    gate.failed(gate.admit("p"), BOOM)  # carries the successes not yet reported
    snap = store.snapshot(["p"])["p"]
    assert (snap.failures, snap.calls) == (2, 2 + 32 * 100)
