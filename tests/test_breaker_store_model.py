"""Model test: ``transition.lua`` in a real Redis against the pure rules in memory.

A Hypothesis state machine applies the same operations at the same (controlled)
times to ``RedisBreakerStore`` and ``MemoryBreakerStore`` seeded with the same jitter
rng, and after every step asserts identical results, identical snapshots and
identical published events (Redis pub/sub vs the memory store's ``publish``).
Needs Redis (the run's leased DB, see conftest.py); skipped without it
unless CI=true.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import redis
from conftest import delete_prefix, scratch_redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from flexitasks.breaker import (
    OPERATIONS,
    Admit,
    BreakerPolicy,
    BreakerState,
    CoolDown,
    Force,
    MemoryBreakerStore,
    Operation,
    ProbeResult,
    RecordFailure,
    RecordSuccess,
    RedisBreakerStore,
)

RUN_PREFIX = f"flexitasks-test-{uuid.uuid4().hex[:12]}"
PROVIDERS = ("p1", "p2")
OWNERS = ("w1", "w2", "w3")
START = 1_700_000_000.123456  # epoch-sized, with microseconds: precision must survive Lua
POLICIES = (
    BreakerPolicy(
        failure_threshold=2, failure_rate_threshold=0.5, window=60.0, recovery_timeout=10.0,
        max_recovery_timeout=40.0, success_threshold=1, jitter=0.0, probe_ttl=30.0,
    ),
    BreakerPolicy(
        failure_threshold=3, failure_rate_threshold=0.6, window=30.0, recovery_timeout=5.0,
        max_recovery_timeout=60.0, success_threshold=2, jitter=0.2, probe_ttl=20.0,
    ),
    BreakerPolicy(
        failure_threshold=1, failure_rate_threshold=0.25, window=7.5, recovery_timeout=0.3,
        max_recovery_timeout=100.0, success_threshold=3, jitter=0.5, probe_ttl=12.5,
    ),
)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    with scratch_redis(RUN_PREFIX) as client:
        yield client


class BreakerModel(RuleBasedStateMachine):
    """Redis store vs memory store, same ops, same clock, same jitter seed."""

    client: redis.Redis  # set by the test before running
    applied: ClassVar[set[str]] = set()  # names of the operations the run has compared

    def __init__(self) -> None:
        super().__init__()
        self.t = START
        self.policy = POLICIES[0]
        self.prefix = f"{RUN_PREFIX}-{uuid.uuid4().hex[:8]}"
        self.channel = f"{self.prefix}:events"
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(self.channel)
        confirm = self.pubsub.get_message(timeout=2.0)
        assert confirm is not None and confirm["type"] == "subscribe"
        self.memory_events: list[dict[str, Any]] = []
        self.redis_events: list[dict[str, Any]] = []
        self.redis = RedisBreakerStore(
            self.client, self.prefix, self.channel, clock=lambda: self.t, rng=random.Random(1234)
        )
        self.memory = MemoryBreakerStore(
            clock=lambda: self.t, rng=random.Random(1234), publish=self.memory_events.append
        )

    # ------------------------------------------------------------ helpers

    def apply(self, op: Operation, provider: str) -> None:
        BreakerModel.applied.add(op.name)
        r = self.redis.run(provider, self.policy, op)
        m = self.memory.run(provider, self.policy, op)
        assert r.snapshot == m.snapshot, f"{op} on {provider}"
        assert (r.transitioned, r.granted, r.previous) == (m.transitioned, m.granted, m.previous), op
        if r.transitioned:
            assert r.snapshot.generation == m.snapshot.generation

    def model(self, provider: str) -> Any:
        return self.memory.snapshot([provider])[provider]

    # ------------------------------------------------------------ rules

    @initialize(policy=st.sampled_from(POLICIES))
    def choose_policy(self, policy: BreakerPolicy) -> None:
        self.policy = policy

    @rule(provider=st.sampled_from(PROVIDERS), successes=st.integers(0, 3))
    def record_failure(self, provider: str, successes: int) -> None:
        self.apply(RecordFailure(successes), provider)

    @rule(provider=st.sampled_from(PROVIDERS))
    def trip(self, provider: str) -> None:
        """Enough failures in a row to open a CLOSED breaker (reach deep states sooner)."""
        for _ in range(self.policy.failure_threshold):
            self.apply(RecordFailure(), provider)

    @rule(provider=st.sampled_from(PROVIDERS), owner=st.sampled_from(OWNERS))
    def wait_and_probe(self, provider: str, owner: str) -> None:
        """Sleep until the breaker may be probed, then ask for the probe."""
        self.t = max(self.t, self.model(provider).open_until)
        self.apply(Admit(owner), provider)

    @rule(provider=st.sampled_from(PROVIDERS), successes=st.integers(0, 3))
    def record_success(self, provider: str, successes: int) -> None:
        self.apply(RecordSuccess(successes), provider)

    @rule(provider=st.sampled_from(PROVIDERS), owner=st.sampled_from(OWNERS))
    def admit(self, provider: str, owner: str) -> None:
        self.apply(Admit(owner), provider)

    def probing(self) -> list[str]:
        return [p for p in PROVIDERS if self.model(p).probe_owner is not None]

    @precondition(lambda self: self.probing())
    @rule(data=st.data(), ok=st.booleans())
    def probe_result_by_holder(self, data: st.DataObject, ok: bool) -> None:
        provider = data.draw(st.sampled_from(self.probing()))
        self.apply(ProbeResult(self.model(provider).probe_owner or "", ok), provider)

    @precondition(lambda self: self.probing())
    @rule(data=st.data(), ok=st.booleans())
    def probe_result_by_holder_at_expiry(self, data: st.DataObject, ok: bool) -> None:
        """The holder reports exactly when its token expires: too late, nothing changes."""
        provider = data.draw(st.sampled_from(self.probing()))
        snap = self.model(provider)
        self.t = max(self.t, snap.probe_until)
        self.apply(ProbeResult(snap.probe_owner or "", ok), provider)

    @rule(
        provider=st.sampled_from(PROVIDERS),
        owner=st.sampled_from(OWNERS),
        outcomes=st.lists(st.booleans(), min_size=1, max_size=4),
    )
    def probe_cycles(self, provider: str, owner: str, outcomes: list[bool]) -> None:
        """Wait for recovery, take the probe, report it; repeated, so reopen_count climbs
        through the exponential intervals to the cap (or successes add up to close)."""
        for ok in outcomes:
            self.t = max(self.t, self.model(provider).open_until)
            self.apply(Admit(owner), provider)
            self.apply(ProbeResult(owner, ok), provider)

    @rule(provider=st.sampled_from(PROVIDERS), owner=st.sampled_from(OWNERS), ok=st.booleans())
    def probe_result_by_anyone(self, provider: str, owner: str, ok: bool) -> None:
        self.apply(ProbeResult(owner, ok), provider)

    @rule(
        provider=st.sampled_from(PROVIDERS),
        seconds=st.one_of(st.sampled_from([0.0, 1.0, 5.0, 30.0]), st.floats(0, 120, allow_nan=False)),
    )
    def cool_down(self, provider: str, seconds: float) -> None:
        self.apply(CoolDown(seconds), provider)

    @rule(
        provider=st.sampled_from(PROVIDERS),
        state=st.sampled_from([BreakerState.FORCED_OPEN, BreakerState.DISABLED, BreakerState.CLOSED]),
    )
    def force(self, provider: str, state: BreakerState) -> None:
        self.apply(Force(state), provider)

    @rule(dt=st.one_of(st.sampled_from([0.0, 1.0, 5.0, 10.0, 30.0, 60.0, 70.0]), st.floats(0, 70)))
    def advance(self, dt: float) -> None:
        self.t += dt

    @rule(provider=st.sampled_from(PROVIDERS), which=st.sampled_from(["open_until", "probe_until"]))
    def advance_to_deadline(self, provider: str, which: str) -> None:
        """Land exactly on a deadline: the >= / < boundaries must agree too."""
        deadline = getattr(self.model(provider), which)
        if deadline > self.t:
            self.t = deadline

    @rule(policy=st.sampled_from(POLICIES))
    def switch_policy(self, policy: BreakerPolicy) -> None:
        self.policy = policy

    # ------------------------------------------------------------ invariants

    @invariant()
    def snapshots_agree(self) -> None:
        assert self.redis.snapshot(list(PROVIDERS)) == self.memory.snapshot(list(PROVIDERS))

    @invariant()
    def events_agree(self) -> None:
        deadline = time.monotonic() + 2.0
        while len(self.redis_events) < len(self.memory_events) and time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None and message["type"] == "message":
                event = json.loads(message["data"])
                assert event.pop("deployment") == self.prefix  # the memory store serves one deployment
                self.redis_events.append(event)
        assert self.redis_events == self.memory_events

    def teardown(self) -> None:
        try:
            extra = self.pubsub.get_message(timeout=0.01)
            assert extra is None or extra["type"] != "message", f"unexpected event {extra}"
        finally:
            self.pubsub.close()
            delete_prefix(self.client, self.prefix)


def test_redis_store_matches_memory_model(redis_client: redis.Redis) -> None:
    BreakerModel.client = redis_client
    BreakerModel.applied = set()
    run_state_machine_as_test(
        BreakerModel,
        settings=settings(
            max_examples=80,
            stateful_step_count=30,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert BreakerModel.applied == {op.name for op in OPERATIONS}  # every operation was compared
