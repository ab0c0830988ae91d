"""Units of the breaker sync: event validation (``breaker/schema.py``) and the local
mirror's rules (``breaker/mirror.py``): stale generations are ignored, a snapshot
replaces everything. One test reads events the real Lua script publishes."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import pytest
import redis
from conftest import KEY_PREFIX
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.schema import FailureEvent, InvalidEvent, TransitionEvent, parse_event
from flexitasks.breaker.store import BreakerPolicy, BreakerSnapshot, BreakerState


def transition(generation: int, state: str = "open", provider: str = "primary", **extra: Any) -> bytes:
    event = {"v": 1, "type": "transition", "provider": provider, "state": state, "generation": generation,
             "at": 1000.0, "open_until": 1010.0, **extra}
    return json.dumps(event).encode()


def failure(generation: int, failures: int, calls: int, at: float = 1000.0) -> bytes:
    event = {"v": 1, "type": "failure", "provider": "primary", "generation": generation, "failures": failures,
             "calls": calls, "at": at}
    return json.dumps(event).encode()


# -- events ----------------------------------------------------------------------------------------
def test_a_transition_event_parses():
    event = parse_event(transition(4, previous="closed", probe_owner=None, reason="threshold"))
    assert isinstance(event, TransitionEvent)
    assert (event.provider, event.state, event.previous, event.generation) == (
        "primary", BreakerState.OPEN, BreakerState.CLOSED, 4)
    assert event.open_until == 1010.0 and event.reason == "threshold"


def test_a_failure_event_parses_from_str_too():
    event = parse_event(failure(2, 3, 4).decode())
    assert isinstance(event, FailureEvent)
    assert (event.failures, event.calls, event.generation) == (3, 4, 2)


def test_unknown_extra_fields_are_tolerated():
    """Forward compatibility: a newer publisher may add fields within schema version 1."""
    assert parse_event(transition(1, colour="red")).generation == 1


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe\x00garbage",
        b"not json",
        b"null",
        b"[1, 2]",
        b'"open"',
        b"{}",
        json.dumps({"v": 1, "type": "transition"}).encode(),
        json.dumps({"v": 1, "type": "explode", "provider": "primary", "generation": 1, "at": 1.0}).encode(),
        json.dumps({"v": 2, "type": "transition", "provider": "primary", "state": "open", "generation": 1,
                    "at": 1.0}).encode(),
        transition(1, state="exploded"),
        transition(-1),
        transition(1, provider=""),
        transition(1.5),  # type: ignore[arg-type]
        failure(1, -1, 3),
    ],
    ids=["empty", "garbage-bytes", "not-json", "null", "list", "string", "no-type", "missing-fields",
         "unknown-type", "unknown-version", "unknown-state", "negative-generation", "no-provider",
         "fractional-generation", "negative-count"],
)
def test_malformed_events_are_rejected_as_invalid_event(data):
    with pytest.raises(InvalidEvent) as info:
        parse_event(data)
    assert "invalid breaker event" in str(info.value)


fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                        st.lists(st.integers(), max_size=2))


@fuzz
@given(st.binary(max_size=200))
def test_no_bytes_raise_anything_but_invalid_event(data):
    with contextlib.suppress(InvalidEvent):
        parse_event(data)


@fuzz
@given(st.sampled_from([transition(1), failure(1, 1, 1)]), st.data())
def test_no_mutated_event_raises_anything_but_invalid_event(valid, data):
    """One field of a valid event replaced (or dropped): either rejected, or a well-typed event."""
    fields = json.loads(valid)
    key = data.draw(st.sampled_from([*fields, "extra"]))
    if data.draw(st.booleans()):
        fields.pop(key, None)
    else:
        fields[key] = data.draw(JSON_VALUES)
    try:
        event = parse_event(json.dumps(fields))
    except InvalidEvent:
        return
    assert isinstance(event.generation, int) and event.generation >= 0
    assert isinstance(event.provider, str) and event.provider


@pytest.mark.parametrize("extra", [{"at": float("nan")}, {"open_until": float("inf")}],
                         ids=["nan-at", "inf-until"])
def test_non_finite_times_are_rejected(extra):
    with pytest.raises(InvalidEvent):
        parse_event(transition(1, **extra))


@pytest.mark.parametrize("generation", [True, "5"], ids=["bool", "string"])
def test_a_generation_must_be_a_json_integer(generation):
    with pytest.raises(InvalidEvent):
        parse_event(transition(generation))


def test_every_event_the_lua_publishes_parses(redis_client: redis.Redis):
    """The contract between transition.lua and events.py, through real Redis pub/sub."""
    channel = f"{KEY_PREFIX}:unit-events"
    store = RedisBreakerStore(redis_client, key_prefix=f"{KEY_PREFIX}:unit", channel=channel)
    policy = BreakerPolicy(failure_threshold=2, recovery_timeout=0.05, max_recovery_timeout=0.1, jitter=0.0)
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)
    try:
        assert pubsub.get_message(timeout=1.0) is None  # the subscribe confirmation, swallowed
        store.record_failure("p", policy)  # a failure event
        store.record_failure("p", policy)  # closed -> open
        time.sleep(0.06)
        store.admit("p", policy, owner="unit")  # open -> half_open
        store.probe_result("p", policy, owner="unit", ok=True)  # half_open -> closed
        store.force("p", policy, BreakerState.FORCED_OPEN)
        events = []
        deadline = time.monotonic() + 5
        while len(events) < 5 and time.monotonic() < deadline:
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                events.append(parse_event(message["data"]))
    finally:
        pubsub.close()
    assert [type(e).__name__ for e in events] == ["FailureEvent"] + ["TransitionEvent"] * 4
    transitions = [e for e in events if isinstance(e, TransitionEvent)]
    assert [e.state for e in transitions] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED,
                                              BreakerState.FORCED_OPEN]
    assert [e.generation for e in transitions] == [1, 2, 3, 4]
    assert transitions[1].probe_owner == "unit"


# -- the mirror ------------------------------------------------------------------------------------
def mirror() -> tuple[Mirror, list[tuple[str, int]]]:
    m = Mirror(["primary", "secondary"], clock=lambda: 1000.0)
    seen: list[tuple[str, int]] = []
    m.listeners.append(lambda provider, view: seen.append((provider, view.snapshot.generation)))
    return m, seen


def test_a_control_reply_brief_is_a_part_of_the_full_snapshot():
    snap = BreakerSnapshot("p", BreakerState.FORCED_OPEN, generation=4, reason="operator", now=12.5)
    brief = snap.to_brief()
    assert brief == {"provider": "p", "state": "forced_open", "generation": 4}
    assert brief.items() <= snap.to_dict().items()


def test_a_newer_transition_is_applied_and_announced_once():
    m, seen = mirror()
    assert m.apply_event(parse_event(transition(3)))
    snap = m.get("primary").snapshot
    assert (snap.state, snap.generation, snap.open_until) == (BreakerState.OPEN, 3, 1010.0)
    assert seen == [("primary", 3)]
    assert m.get("secondary").snapshot.state is BreakerState.CLOSED


@pytest.mark.parametrize("stale", [3, 2, 0])
def test_a_transition_with_a_stale_generation_is_ignored(stale):
    m, seen = mirror()
    m.apply_event(parse_event(transition(3, state="forced_open")))
    assert not m.apply_event(parse_event(transition(stale, state="closed")))
    snap = m.get("primary").snapshot
    assert (snap.state, snap.generation) == (BreakerState.FORCED_OPEN, 3)
    assert seen == [("primary", 3)]


def test_failure_counts_of_an_older_generation_are_ignored():
    m, _ = mirror()
    m.apply_event(parse_event(transition(3, state="closed")))
    assert m.apply_event(parse_event(failure(3, 2, 2)))
    assert (m.get("primary").snapshot.failures, m.get("primary").failures_seen_at) == (2, 1000.0)
    assert not m.apply_event(parse_event(failure(2, 9, 9)))
    assert m.get("primary").snapshot.failures == 2


def test_closing_clears_the_failure_counts():
    m, _ = mirror()
    m.apply_event(parse_event(failure(0, 4, 4)))
    m.apply_event(parse_event(transition(1, state="closed")))
    view = m.get("primary")
    assert (view.snapshot.failures, view.snapshot.calls, view.failures_seen_at) == (0, 0, 0.0)


def test_a_snapshot_replaces_everything_even_with_a_lower_generation():
    """After a Redis restart the authoritative generation starts again from 0: the snapshot wins."""
    m, seen = mirror()
    m.apply_event(parse_event(transition(7, state="forced_open")))
    seen.clear()
    m.load({
        "primary": BreakerSnapshot(provider="primary", state=BreakerState.DISABLED, generation=1, now=2000.0),
        "secondary": BreakerSnapshot(provider="secondary", now=2000.0),
    })
    snap = m.get("primary").snapshot
    assert (snap.state, snap.generation) == (BreakerState.DISABLED, 1)
    assert seen == [("primary", 1)]  # only what changed is announced
    assert m.now() == 2000.0  # the store's clock, through the offset
    # and events are now judged against the new generation
    assert m.apply_event(parse_event(transition(2, state="open")))
    assert m.get("primary").snapshot.generation == 2


def test_a_store_result_older_than_the_mirror_is_not_applied():
    m, _ = mirror()
    m.apply_event(parse_event(transition(5)))
    older = BreakerSnapshot(provider="primary", state=BreakerState.CLOSED, generation=4, now=1001.0)
    assert not m.apply(older)
    assert m.get("primary").snapshot.generation == 5
    newer = BreakerSnapshot(provider="primary", state=BreakerState.HALF_OPEN, generation=6, now=1001.0)
    assert m.apply(newer)
    assert m.get("primary").snapshot.state is BreakerState.HALF_OPEN


def test_an_event_for_an_unknown_provider_is_not_applied():
    """Otherwise anything published on the channel grows every process's mirror and view for good:
    snapshots only ever cover configured providers, so nothing would remove the entry."""
    m, seen = mirror()
    applied = m.apply_event(parse_event(transition(1, provider="ghost")))
    assert not applied
    assert set(m.views()) == {"primary", "secondary"}
    assert seen == []
