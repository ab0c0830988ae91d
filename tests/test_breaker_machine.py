"""Unit tests of the pure transition rules in ``flexitasks.breaker.machine``.

No Redis, no clock: each test builds a record, applies one rule at a chosen time and
checks the record, the decision and the event.
"""

from __future__ import annotations

import pytest

from flexitasks.breaker import machine
from flexitasks.breaker.machine import BreakerRecord, decide
from flexitasks.breaker.memory_store import MemoryBreakerStore
from flexitasks.breaker.store import BreakerPolicy, BreakerState

S = BreakerState
POLICY = BreakerPolicy(
    failure_threshold=3,
    failure_rate_threshold=0.5,
    window=60.0,
    recovery_timeout=10.0,
    max_recovery_timeout=60.0,
    success_threshold=2,
    jitter=0.1,
    probe_ttl=30.0,
)
T0 = 1000.0


def rec(state: BreakerState = S.CLOSED, **kw: object) -> BreakerRecord:
    return BreakerRecord(provider="p", state=state, **kw)  # type: ignore[arg-type]


def opened(now: float = T0, reopen_count: int = 0) -> BreakerRecord:
    return rec(S.OPEN, generation=1, open_until=now, reopen_count=reopen_count, reason="threshold")


def half_open(
    owner: str | None = "a", until: float = T0 + 30, successes: int = 0, reopen: int = 1
) -> BreakerRecord:
    return rec(
        S.HALF_OPEN,
        generation=2,
        probe_owner=owner,
        probe_until=until,
        probe_successes=successes,
        reopen_count=reopen,
        open_until=T0 - 1,
    )


# ---------------------------------------------------------------- interval


def test_interval_doubles_caps_and_jitter_only_shortens() -> None:
    assert machine.interval(POLICY, 0, 0.0) == 10.0
    assert machine.interval(POLICY, 1, 0.0) == 20.0
    assert machine.interval(POLICY, 2, 0.0) == 40.0
    assert machine.interval(POLICY, 3, 0.0) == 60.0
    assert machine.interval(POLICY, 10_000, 0.0) == 60.0  # no overflow for huge counts
    assert machine.interval(POLICY, 0, 0.5) == pytest.approx(10.0 * 0.95)
    assert machine.interval(POLICY, 0, 0.999999) > 9.0


# ---------------------------------------------------------------- record_failure


def test_failures_below_threshold_publish_failure_event() -> None:
    r = rec()
    d = decide(r, "record_failure", T0, POLICY, 0.0)
    assert not d.transitioned and r.state is S.CLOSED
    assert d.event == {
        "v": 1, "type": "failure", "provider": "p", "generation": 0, "failures": 1, "calls": 1, "at": T0
    }


def test_threshold_opens_once_with_interval_zero() -> None:
    r = rec()
    decide(r, "record_failure", T0, POLICY, 0.0)
    decide(r, "record_failure", T0 + 1, POLICY, 0.0)
    d = decide(r, "record_failure", T0 + 2, POLICY, 0.5)
    assert d.transitioned and d.previous is S.CLOSED
    assert r.state is S.OPEN and r.generation == 1 and r.reopen_count == 0 and r.reason == "threshold"
    assert r.open_until == T0 + 2 + 10.0 * (1 - 0.1 * 0.5)
    assert d.event is not None and d.event["type"] == "transition" and d.event["state"] == "open"
    assert d.event["previous"] == "closed" and d.event["generation"] == 1 and d.event["probe_owner"] is None
    # further failures while OPEN change nothing and publish nothing
    before = (r.generation, dict(r.buckets))
    d2 = decide(r, "record_failure", T0 + 3, POLICY, 0.0)
    assert not d2.transitioned and d2.event is None and (r.generation, r.buckets) == before


def test_rate_threshold_holds_breaker_closed_with_many_successes() -> None:
    r = rec()
    for i in range(5):
        d = decide(r, "record_failure", T0 + i, POLICY, 0.0, successes=2)
        assert not d.transitioned
    assert machine.window_counts(r, T0 + 5) == (5, 15)
    assert r.state is S.CLOSED
    d = decide(r, "record_failure", T0 + 6, POLICY, 0.0)
    assert machine.window_counts(r, T0 + 6) == (6, 16)
    assert not d.transitioned
    r2 = rec()
    decide(r2, "record_failure", T0, POLICY, 0.0, successes=1)
    decide(r2, "record_failure", T0, POLICY, 0.0, successes=1)
    d = decide(r2, "record_failure", T0, POLICY, 0.0, successes=1)  # 3/6 == 0.5: the rate is inclusive
    assert d.transitioned


def test_window_forgets_old_failures() -> None:
    r = rec()
    decide(r, "record_failure", T0, POLICY, 0.0)
    decide(r, "record_failure", T0 + 0.5, POLICY, 0.0)
    assert machine.window_counts(r, T0 + 59) == (2, 2)
    assert machine.window_counts(r, T0 + 60) == (0, 0)  # bucket width 1 s: gone at t+window
    d = decide(r, "record_failure", T0 + 61, POLICY, 0.0)
    assert not d.transitioned and machine.window_counts(r, T0 + 61) == (1, 1)
    assert list(r.buckets) == [1061]  # old buckets pruned on write


def test_policy_with_other_window_starts_fresh_window() -> None:
    r = rec()
    decide(r, "record_failure", T0, POLICY, 0.0)
    other = BreakerPolicy(failure_threshold=3, window=30.0)
    decide(r, "record_failure", T0, other, 0.0)
    assert r.window_length == 30.0 and machine.window_counts(r, T0) == (1, 1)


@pytest.mark.parametrize("state", [S.OPEN, S.HALF_OPEN, S.FORCED_OPEN, S.DISABLED])
def test_failures_and_successes_ignored_outside_closed(state: BreakerState) -> None:
    r = rec(state, probe_owner="a" if state is S.HALF_OPEN else None)
    for op in ("record_failure", "record_success"):
        d = decide(r, op, T0, POLICY, 0.0, successes=1)
        assert not d.transitioned and d.event is None
    assert r.buckets == {} and r.state is state and r.generation == 0


def test_record_success_counts_calls_only() -> None:
    r = rec()
    d = decide(r, "record_success", T0, POLICY, successes=4)
    assert not d.transitioned and d.event is None and machine.window_counts(r, T0) == (0, 4)


# ---------------------------------------------------------------- acquire_probe


def test_open_before_open_until_denies_probe() -> None:
    r = opened(now=T0 + 5)
    d = decide(r, "acquire_probe", T0, POLICY, owner="a")
    assert not d.granted and not d.transitioned and r.state is S.OPEN


def test_open_elapsed_goes_half_open_with_token() -> None:
    r = opened(now=T0)
    d = decide(r, "acquire_probe", T0, POLICY, owner="a")  # now == open_until counts as elapsed
    assert d.granted and d.transitioned and d.previous is S.OPEN
    assert r.state is S.HALF_OPEN and r.generation == 2 and r.reason == "recovery_elapsed"
    assert r.probe_owner == "a" and r.probe_until == T0 + 30 and r.probe_successes == 0
    assert d.event is not None and d.event["probe_owner"] == "a" and d.event["probe_until"] == T0 + 30
    d2 = decide(r, "acquire_probe", T0 + 1, POLICY, owner="b")
    assert not d2.granted and not d2.transitioned
    d3 = decide(r, "acquire_probe", T0 + 1, POLICY, owner="a")
    assert d3.granted and not d3.transitioned and r.probe_until == T0 + 30  # holder: no extension


def test_half_open_expired_or_free_token_is_regranted_without_transition() -> None:
    r = half_open(owner="a", until=T0 + 30, successes=1)
    d = decide(r, "acquire_probe", T0 + 30, POLICY, owner="b")
    assert d.granted and not d.transitioned and d.event is None
    assert r.probe_owner == "b" and r.probe_until == T0 + 60 and r.generation == 2 and r.probe_successes == 1
    r2 = half_open(owner=None, until=0.0)
    d2 = decide(r2, "acquire_probe", T0, POLICY, owner="c")
    assert d2.granted and r2.probe_owner == "c"


@pytest.mark.parametrize(("state", "granted"), [(S.CLOSED, True), (S.DISABLED, True), (S.FORCED_OPEN, False)])
def test_acquire_probe_in_other_states(state: BreakerState, granted: bool) -> None:
    r = rec(state)
    d = decide(r, "acquire_probe", T0, POLICY, owner="a")
    assert d.granted is granted and not d.transitioned and r.probe_owner is None and r.state is state


# ---------------------------------------------------------------- probe_result


def test_probe_success_below_threshold_releases_token() -> None:
    r = half_open()
    d = decide(r, "probe_result", T0, POLICY, 0.0, owner="a", ok=True)
    assert not d.transitioned and d.event is None
    assert r.state is S.HALF_OPEN and r.probe_successes == 1 and r.probe_owner is None


def test_probe_successes_reaching_threshold_close_and_reset() -> None:
    r = half_open(successes=1, reopen=3)
    r.window_length, r.buckets = 60.0, {16: [4, 4]}
    d = decide(r, "probe_result", T0, POLICY, 0.0, owner="a", ok=True)
    assert d.transitioned and d.previous is S.HALF_OPEN
    assert r.state is S.CLOSED and r.reason == "probe_succeeded" and r.generation == 3
    assert r.reopen_count == 0 and r.buckets == {} and r.probe_owner is None and r.probe_successes == 0


def test_probe_failure_reopens_with_doubled_interval() -> None:
    r = half_open(reopen=1)
    d = decide(r, "probe_result", T0, POLICY, 0.25, owner="a", ok=False)
    assert d.transitioned and r.state is S.OPEN and r.reason == "probe_failed"
    assert r.reopen_count == 2 and r.open_until == T0 + 40.0 * (1 - 0.1 * 0.25)
    assert r.probe_owner is None and r.probe_until == 0.0


@pytest.mark.parametrize(("owner", "now"), [("b", T0), ("a", T0 + 30), ("a", T0 + 100)])
def test_stale_or_foreign_probe_result_changes_nothing(owner: str, now: float) -> None:
    for ok in (True, False):
        r = half_open(owner="a", until=T0 + 30)
        d = decide(r, "probe_result", now, POLICY, 0.0, owner=owner, ok=ok)
        assert not d.transitioned and d.event is None
        assert r == half_open(owner="a", until=T0 + 30)


def test_probe_result_outside_half_open_changes_nothing() -> None:
    r = opened()
    d = decide(r, "probe_result", T0, POLICY, 0.0, owner="a", ok=False)
    assert not d.transitioned and r == opened()


# ---------------------------------------------------------------- cool_down


@pytest.mark.parametrize("state", [S.CLOSED, S.HALF_OPEN])
def test_cool_down_opens_keeping_reopen_count(state: BreakerState) -> None:
    r = half_open(reopen=2) if state is S.HALF_OPEN else rec()
    d = decide(r, "cool_down", T0, POLICY, seconds=7.5)
    assert d.transitioned and d.previous is state and r.state is S.OPEN and r.reason == "retry_after"
    assert r.open_until == T0 + 7.5 and r.probe_owner is None
    assert r.reopen_count == (2 if state is S.HALF_OPEN else 0)


def test_cool_down_in_open_only_extends() -> None:
    r = opened(now=T0 + 20)
    d = decide(r, "cool_down", T0, POLICY, seconds=5)
    assert not d.transitioned and d.event is None and r.open_until == T0 + 20
    d = decide(r, "cool_down", T0, POLICY, seconds=25)
    assert not d.transitioned and d.event is None and r.open_until == T0 + 25 and r.generation == 1


@pytest.mark.parametrize("state", [S.FORCED_OPEN, S.DISABLED])
def test_cool_down_ignored_for_operator_states(state: BreakerState) -> None:
    r = rec(state)
    assert not decide(r, "cool_down", T0, POLICY, seconds=5).transitioned
    assert r == rec(state)


# ---------------------------------------------------------------- force


def test_force_transitions_only_on_change_and_clears() -> None:
    r = half_open(reopen=2)
    d = decide(r, "force", T0, POLICY, target=S.FORCED_OPEN)
    assert d.transitioned and r.state is S.FORCED_OPEN and r.reason == "operator" and r.probe_owner is None
    assert r.reopen_count == 2
    assert not decide(r, "force", T0, POLICY, target=S.FORCED_OPEN).transitioned
    d = decide(r, "force", T0, POLICY, target="closed")
    assert d.transitioned and r.state is S.CLOSED and r.reopen_count == 0
    decide(r, "record_failure", T0, POLICY, 0.0)
    gen = r.generation
    d = decide(r, "force", T0, POLICY, target=S.CLOSED)  # already closed: clears window, no transition
    assert not d.transitioned and d.event is None and r.buckets == {} and r.generation == gen
    d = decide(r, "force", T0, POLICY, target=S.DISABLED)
    assert d.transitioned and d.event is not None and d.event["reason"] == "operator"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("op", "kwargs"),
    [
        ("bogus", {}),
        ("record_failure", {"successes": -1}),
        ("record_success", {"successes": 1.5}),
        ("acquire_probe", {"owner": ""}),
        ("probe_result", {"owner": "a", "ok": None}),
        ("cool_down", {"seconds": float("inf")}),
        ("cool_down", {"seconds": -1}),
        ("force", {"target": S.OPEN}),
        ("force", {"target": "nope"}),
    ],
)
def test_bad_calls_raise_value_error_without_mutating(op: str, kwargs: dict[str, object]) -> None:
    r = rec()
    with pytest.raises(ValueError):
        decide(r, op, T0, POLICY, 0.0, **kwargs)  # type: ignore[arg-type]
    assert r == rec()


def test_bad_policy_raises() -> None:
    with pytest.raises(ValueError, match="jitter"):
        machine.validate_policy(BreakerPolicy(jitter=1.5))
    with pytest.raises(ValueError, match="failure_threshold"):
        machine.validate_policy(BreakerPolicy(failure_threshold=0))


# ---------------------------------------------------------------- memory store wrapper


def test_memory_store_publishes_and_uses_its_clock() -> None:
    t = [T0]
    events: list[dict[str, object]] = []
    store = MemoryBreakerStore(clock=lambda: t[0], publish=events.append)
    policy = BreakerPolicy(failure_threshold=1, jitter=0.0)
    res = store.record_failure("p", policy)
    assert res.transitioned and res.snapshot.open_until == T0 + 10 and res.snapshot.now == T0
    assert [e["type"] for e in events] == ["transition"]
    t[0] += 10
    assert store.acquire_probe("p", policy, "w1").granted
    assert store.snapshot(["p", "q"])["q"].state is S.CLOSED
    assert [e["state"] for e in events] == ["open", "half_open"]


def test_memory_store_survives_a_failing_publisher() -> None:
    def boom(event: dict[str, object]) -> None:
        raise RuntimeError("subscriber down")

    store = MemoryBreakerStore(clock=lambda: T0, publish=boom)
    assert store.force("p", POLICY, S.FORCED_OPEN).transitioned
    assert store.snapshot(["p"])["p"].state is S.FORCED_OPEN
