"""Unit tests of the pure transition rules in ``flexitasks.breaker.machine``.

No Redis, no clock: each test builds a record, applies one rule at a chosen time and
checks the record, the decision and the event.
"""

from __future__ import annotations

import pytest

from flexitasks.breaker import machine
from flexitasks.breaker.machine import (
    OPERATIONS,
    Admit,
    BreakerRecord,
    CoolDown,
    Force,
    Operation,
    ProbeResult,
    RecordFailure,
    RecordSuccess,
)
from flexitasks.breaker.memory_store import MemoryBreakerStore
from flexitasks.breaker.store import BreakerPolicy, BreakerSnapshot, BreakerState

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
    return BreakerRecord(BreakerSnapshot(provider="p", state=state, **kw))  # type: ignore[arg-type]


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
    d = RecordFailure().apply(r, POLICY, T0, 0.0)
    assert not d.transitioned and r.snap.state is S.CLOSED
    assert d.event == {
        "v": 1, "type": "failure", "provider": "p", "generation": 0, "failures": 1, "calls": 1, "at": T0
    }


def test_threshold_opens_once_with_interval_zero() -> None:
    r = rec()
    RecordFailure().apply(r, POLICY, T0, 0.0)
    RecordFailure().apply(r, POLICY, T0 + 1, 0.0)
    d = RecordFailure().apply(r, POLICY, T0 + 2, 0.5)
    assert d.transitioned and d.previous is S.CLOSED
    assert (r.snap.state, r.snap.generation, r.snap.reopen_count, r.snap.reason) == (S.OPEN, 1, 0, "threshold")
    assert r.snap.open_until == T0 + 2 + 10.0 * (1 - 0.1 * 0.5)
    assert d.event is not None and d.event["type"] == "transition" and d.event["state"] == "open"
    assert d.event["previous"] == "closed" and d.event["generation"] == 1 and d.event["probe_owner"] is None
    # further failures while OPEN change nothing and publish nothing
    before = (r.snap.generation, dict(r.buckets))
    d2 = RecordFailure().apply(r, POLICY, T0 + 3, 0.0)
    assert not d2.transitioned and d2.event is None and (r.snap.generation, r.buckets) == before


def test_rate_threshold_holds_breaker_closed_with_many_successes() -> None:
    r = rec()
    for i in range(5):
        d = RecordFailure(2).apply(r, POLICY, T0 + i, 0.0)
        assert not d.transitioned
    assert machine.window_counts(r, T0 + 5) == (5, 15)
    assert r.snap.state is S.CLOSED
    d = RecordFailure().apply(r, POLICY, T0 + 6, 0.0)
    assert machine.window_counts(r, T0 + 6) == (6, 16)
    assert not d.transitioned
    r2 = rec()
    RecordFailure(1).apply(r2, POLICY, T0, 0.0)
    RecordFailure(1).apply(r2, POLICY, T0, 0.0)
    d = RecordFailure(1).apply(r2, POLICY, T0, 0.0)  # 3/6 == 0.5: the rate is inclusive
    assert d.transitioned


def test_window_forgets_old_failures() -> None:
    r = rec()
    RecordFailure().apply(r, POLICY, T0, 0.0)
    RecordFailure().apply(r, POLICY, T0 + 0.5, 0.0)
    assert machine.window_counts(r, T0 + 59) == (2, 2)
    assert machine.window_counts(r, T0 + 60) == (0, 0)  # bucket width 1 s: gone at t+window
    d = RecordFailure().apply(r, POLICY, T0 + 61, 0.0)
    assert not d.transitioned and machine.window_counts(r, T0 + 61) == (1, 1)
    assert list(r.buckets) == [1061]  # old buckets pruned on write


def test_a_policy_with_another_window_adds_to_the_counts_under_way() -> None:
    """A rolling deploy that changes ``window`` erases nobody's counts (issue 11 item 14)."""
    r = rec()
    RecordFailure().apply(r, POLICY, T0, 0.0)
    other = BreakerPolicy(failure_threshold=3, window=30.0)
    RecordFailure().apply(r, other, T0, 0.0)
    assert r.window_length == POLICY.window and machine.window_counts(r, T0) == (2, 2)
    machine._window_clear(r)
    RecordFailure().apply(r, other, T0, 0.0)  # the next window is counted with the new length
    assert r.window_length == 30.0


@pytest.mark.parametrize("state", [S.OPEN, S.HALF_OPEN, S.FORCED_OPEN, S.DISABLED])
def test_failures_and_successes_ignored_outside_closed(state: BreakerState) -> None:
    r = rec(state, probe_owner="a" if state is S.HALF_OPEN else None)
    for op in (RecordFailure(1), RecordSuccess(1)):
        d = op.apply(r, POLICY, T0, 0.0)
        assert not d.transitioned and d.event is None
    assert r.buckets == {} and r.snap.state is state and r.snap.generation == 0


def test_record_success_counts_calls_only() -> None:
    r = rec()
    d = RecordSuccess(4).apply(r, POLICY, T0, 0.0)
    assert not d.transitioned and d.event is None and machine.window_counts(r, T0) == (0, 4)


# ---------------------------------------------------------------- admit


def test_open_before_open_until_denies_probe() -> None:
    r = opened(now=T0 + 5)
    d = Admit("a").apply(r, POLICY, T0, 0.0)
    assert not d.granted and not d.transitioned and r.snap.state is S.OPEN


def test_open_elapsed_goes_half_open_with_token() -> None:
    r = opened(now=T0)
    d = Admit("a").apply(r, POLICY, T0, 0.0)  # now == open_until counts as elapsed
    assert d.granted and d.transitioned and d.previous is S.OPEN
    assert r.snap.state is S.HALF_OPEN and r.snap.generation == 2 and r.snap.reason == "recovery_elapsed"
    assert r.snap.probe_owner == "a" and r.snap.probe_until == T0 + 30 and r.snap.probe_successes == 0
    assert d.event is not None and d.event["probe_owner"] == "a" and d.event["probe_until"] == T0 + 30
    d2 = Admit("b").apply(r, POLICY, T0 + 1, 0.0)
    assert not d2.granted and not d2.transitioned
    d3 = Admit("a").apply(r, POLICY, T0 + 1, 0.0)
    assert d3.granted and not d3.transitioned and r.snap.probe_until == T0 + 30  # holder: no extension


def test_half_open_expired_or_free_token_is_regranted_without_transition() -> None:
    r = half_open(owner="a", until=T0 + 30, successes=1)
    d = Admit("b").apply(r, POLICY, T0 + 30, 0.0)
    assert d.granted and not d.transitioned and d.event is None
    snap = r.snap
    assert (snap.probe_owner, snap.probe_until, snap.generation, snap.probe_successes) == ("b", T0 + 60, 2, 1)
    r2 = half_open(owner=None, until=0.0)
    d2 = Admit("c").apply(r2, POLICY, T0, 0.0)
    assert d2.granted and r2.snap.probe_owner == "c"


@pytest.mark.parametrize(("state", "granted"), [(S.CLOSED, True), (S.DISABLED, True), (S.FORCED_OPEN, False)])
def test_admit_in_other_states(state: BreakerState, granted: bool) -> None:
    r = rec(state)
    d = Admit("a").apply(r, POLICY, T0, 0.0)
    assert d.granted is granted and not d.transitioned and r.snap.probe_owner is None and r.snap.state is state


# ---------------------------------------------------------------- probe_result


def test_probe_success_below_threshold_releases_token() -> None:
    r = half_open()
    d = ProbeResult("a", True).apply(r, POLICY, T0, 0.0)
    assert not d.transitioned and d.event is None
    assert r.snap.state is S.HALF_OPEN and r.snap.probe_successes == 1 and r.snap.probe_owner is None


def test_probe_successes_reaching_threshold_close_and_reset() -> None:
    r = half_open(successes=1, reopen=3)
    r.window_length, r.buckets = 60.0, {16: [4, 4]}
    d = ProbeResult("a", True).apply(r, POLICY, T0, 0.0)
    assert d.transitioned and d.previous is S.HALF_OPEN
    assert r.snap.state is S.CLOSED and r.snap.reason == "probe_succeeded" and r.snap.generation == 3
    assert r.snap.reopen_count == 0 and r.buckets == {} and r.snap.probe_owner is None and r.snap.probe_successes == 0


def test_probe_failure_reopens_with_doubled_interval() -> None:
    r = half_open(reopen=1)
    d = ProbeResult("a", False).apply(r, POLICY, T0, 0.25)
    assert d.transitioned and r.snap.state is S.OPEN and r.snap.reason == "probe_failed"
    assert r.snap.reopen_count == 2 and r.snap.open_until == T0 + 40.0 * (1 - 0.1 * 0.25)
    assert r.snap.probe_owner is None and r.snap.probe_until == 0.0


@pytest.mark.parametrize(("owner", "now"), [("b", T0), ("a", T0 + 30), ("a", T0 + 100)])
def test_stale_or_foreign_probe_result_changes_nothing(owner: str, now: float) -> None:
    for ok in (True, False):
        r = half_open(owner="a", until=T0 + 30)
        d = ProbeResult(owner, ok).apply(r, POLICY, now, 0.0)
        assert not d.transitioned and d.event is None
        assert r == half_open(owner="a", until=T0 + 30)


def test_probe_result_outside_half_open_changes_nothing() -> None:
    r = opened()
    d = ProbeResult("a", False).apply(r, POLICY, T0, 0.0)
    assert not d.transitioned and r == opened()


# ---------------------------------------------------------------- cool_down


@pytest.mark.parametrize("state", [S.CLOSED, S.HALF_OPEN])
def test_cool_down_opens_keeping_reopen_count(state: BreakerState) -> None:
    r = half_open(reopen=2) if state is S.HALF_OPEN else rec()
    d = CoolDown(7.5).apply(r, POLICY, T0, 0.0)
    assert d.transitioned and d.previous is state and r.snap.state is S.OPEN and r.snap.reason == "retry_after"
    assert r.snap.open_until == T0 + 7.5 and r.snap.probe_owner is None
    assert r.snap.reopen_count == (2 if state is S.HALF_OPEN else 0)


def test_cool_down_in_open_never_shortens_and_an_extension_is_reported_with_its_own_reason() -> None:
    r = opened(now=T0 + 20)
    d = CoolDown(5).apply(r, POLICY, T0, 0.0)
    assert not d.transitioned and d.event is None and r.snap.open_until == T0 + 20
    d = CoolDown(25).apply(r, POLICY, T0, 0.0)
    assert d.transitioned and r.snap.open_until == T0 + 25 and r.snap.generation == 2
    assert (r.snap.state, r.snap.reason) == (S.OPEN, "retry_after_extended")


@pytest.mark.parametrize("state", [S.FORCED_OPEN, S.DISABLED])
def test_cool_down_ignored_for_operator_states(state: BreakerState) -> None:
    r = rec(state)
    assert not CoolDown(5).apply(r, POLICY, T0, 0.0).transitioned
    assert r == rec(state)


# ---------------------------------------------------------------- force


def test_force_transitions_only_on_change_and_clears() -> None:
    r = half_open(reopen=2)
    d = Force(S.FORCED_OPEN).apply(r, POLICY, T0, 0.0)
    assert d.transitioned
    assert (r.snap.state, r.snap.reason, r.snap.probe_owner) == (S.FORCED_OPEN, "operator", None)
    assert r.snap.reopen_count == 2
    assert not Force(S.FORCED_OPEN).apply(r, POLICY, T0, 0.0).transitioned
    d = Force("closed").apply(r, POLICY, T0, 0.0)
    assert d.transitioned and r.snap.state is S.CLOSED and r.snap.reopen_count == 0
    RecordFailure().apply(r, POLICY, T0, 0.0)
    gen = r.snap.generation
    d = Force(S.CLOSED).apply(r, POLICY, T0, 0.0)  # already closed: clears window, no transition
    assert not d.transitioned and d.event is None and r.buckets == {} and r.snap.generation == gen
    d = Force(S.DISABLED).apply(r, POLICY, T0, 0.0)
    assert d.transitioned and d.event is not None and d.event["reason"] == "operator"


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "op",
    [
        RecordFailure(-1),
        RecordSuccess(1.5),  # type: ignore[arg-type]
        Admit(""),
        ProbeResult("a", None),  # type: ignore[arg-type]
        CoolDown(float("inf")),
        CoolDown(-1),
        Force(S.OPEN),
        Force("nope"),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_bad_operations_are_rejected_by_their_own_check(op: Operation) -> None:
    with pytest.raises(ValueError):
        op.validate()


def test_every_store_operation_is_an_object_with_its_script_name() -> None:
    assert [op.name for op in OPERATIONS] == [
        "record_failure", "record_success", "admit", "probe_result", "cool_down", "force"
    ]
    assert {op.name for op in OPERATIONS if op.draws_jitter} == {"record_failure", "probe_result"}


@pytest.mark.parametrize(("now", "rand"), [(float("nan"), 0.0), (T0, 1.0), (T0, -0.1)])
def test_a_bad_time_or_jitter_draw_is_rejected(now: float, rand: float) -> None:
    with pytest.raises(ValueError):
        machine.validate_call(POLICY, now, rand)


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
    assert store.admit("p", policy, "w1").granted
    assert store.snapshot(["p", "q"])["q"].state is S.CLOSED
    assert [e["state"] for e in events] == ["open", "half_open"]


def test_memory_store_survives_a_failing_publisher() -> None:
    def boom(event: dict[str, object]) -> None:
        raise RuntimeError("subscriber down")

    store = MemoryBreakerStore(clock=lambda: T0, publish=boom)
    assert store.force("p", POLICY, S.FORCED_OPEN).transitioned
    assert store.snapshot(["p"])["p"].state is S.FORCED_OPEN
