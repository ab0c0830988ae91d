"""Model test: ``limit.lua`` in a real Redis against the pure rules in memory.

A Hypothesis state machine runs the same checks and finishes at the same controlled
times (random interleavings of calls from several holders, random clock steps, landing
exactly on lease expiries and bucket boundaries) against ``RedisLimiterBackend`` and
``MemoryLimiterBackend``, and asserts identical verdicts and identical views after
every step. Needs Redis (the run's leased DB, see conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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

from flexitasks.limits import LimitPolicy, MemoryLimiterBackend, RedisLimiterBackend

RUN_PREFIX = f"flexitasks-test-limits-{uuid.uuid4().hex[:12]}"
PROVIDERS = ("p1", "p2")
START = 1_700_000_000.123456  # epoch-sized, with microseconds: precision must survive Lua
POLICIES = (
    LimitPolicy(rpm=120.0, burst=2.0),
    LimitPolicy(rpm=7.0, burst=1.0, tpm=1000, max_in_flight=2, lease_ttl=3.5),
    LimitPolicy(tpm=250, lease_ttl=10.0),
    LimitPolicy(max_in_flight=1, lease_ttl=0.75),
    LimitPolicy(rpm=3000.0, burst=37.5, tpm=90_000, max_in_flight=3, lease_ttl=65.0),
    LimitPolicy(rpm=0.5, burst=1.0, tpm=10),
)


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    with scratch_redis(RUN_PREFIX) as client:
        yield client


class LimitsModel(RuleBasedStateMachine):
    client: redis.Redis  # set by the test before running
    refusals: set[str] = set()  # limits seen refusing, across examples: the run reached them

    def __init__(self) -> None:
        super().__init__()
        self.t = START
        self.prefix = f"{RUN_PREFIX}-{uuid.uuid4().hex[:8]}"
        self.redis = RedisLimiterBackend(self.client, self.prefix, clock=lambda: self.t)
        self.memory = MemoryLimiterBackend(clock=lambda: self.t)
        self.policy = dict.fromkeys(PROVIDERS, POLICIES[0])
        self.held: list[tuple[str, str, int]] = []  # (provider, lease, reserved)
        self.serial = 0

    @initialize(p1=st.sampled_from(POLICIES), p2=st.sampled_from(POLICIES))
    def choose_policies(self, p1: LimitPolicy, p2: LimitPolicy) -> None:
        self.policy = {"p1": p1, "p2": p2}

    @rule(provider=st.sampled_from(PROVIDERS),
          tokens=st.one_of(st.integers(0, 400), st.sampled_from([0, 1, 10, 250, 1000, 100_000])))
    def check(self, provider: str, tokens: int, max_wait: float = 0.0) -> None:
        self.serial += 1
        lease = f"w{self.serial % 3}:{self.serial}"
        r = self.redis.check(provider, self.policy[provider], tokens, lease, max_wait)
        m = self.memory.check(provider, self.policy[provider], tokens, lease, max_wait)
        assert r == m, f"check({provider}, {tokens}, {max_wait})"
        self.refusals.update(m.refused)
        self.refusals.update({"booked"} if m.booked else set())
        if m.allowed:
            self.held.append((provider, lease, m.reserved))

    @rule(provider=st.sampled_from(PROVIDERS), tokens=st.integers(0, 400),
          max_wait=st.sampled_from([0.5, 1.0, 30.0, 120.0]))
    def book(self, provider: str, tokens: int, max_wait: float) -> None:
        """A call with nowhere else to go books the next slot within its deadline."""
        self.check(provider, tokens, max_wait)

    @rule(provider=st.sampled_from(PROVIDERS), n=st.integers(2, 8))
    def burst_of_checks(self, provider: str, n: int) -> None:
        """Several calls at the same instant: fills buckets to their depth."""
        for _ in range(n):
            self.check(provider, 50)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), actual=st.one_of(st.none(), st.integers(0, 2000)))
    def finish(self, data: st.DataObject, actual: int | None) -> None:
        provider, lease, reserved = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        r = self.redis.finish(provider, self.policy[provider], lease, reserved, actual)
        m = self.memory.finish(provider, self.policy[provider], lease, reserved, actual)
        assert r == m, f"finish({provider}, {lease}, {reserved}, {actual})"

    @rule(provider=st.sampled_from(PROVIDERS))
    def finish_unknown_lease(self, provider: str) -> None:
        r = self.redis.finish(provider, self.policy[provider], "nobody", 0, 5)
        m = self.memory.finish(provider, self.policy[provider], "nobody", 0, 5)
        assert r == m

    @rule(dt=st.one_of(st.sampled_from([0.0, 0.001, 0.5, 1.0, 3.5, 30.0, 60.0, 70.0]), st.floats(0, 90)))
    def advance(self, dt: float) -> None:
        self.t += dt

    @rule(provider=st.sampled_from(PROVIDERS), which=st.sampled_from(["wait", "lease"]))
    def advance_to_boundary(self, provider: str, which: str) -> None:
        """Land exactly where a refused call would be admitted, or a lease expires:
        the <= / > boundaries must agree too."""
        if which == "wait":
            v = self.memory.check(provider, self.policy[provider], 0, "probe-only")
            # undo nothing: a probing check may have taken a slot in the model only, so
            # replay it on Redis to stay in step
            r = self.redis.check(provider, self.policy[provider], 0, "probe-only")
            assert r == v
            if v.allowed:
                self.held.append((provider, "probe-only", v.reserved))
            self.t += v.retry_after
        else:
            self.t += self.policy[provider].lease_ttl

    @rule(provider=st.sampled_from(PROVIDERS), policy=st.sampled_from(POLICIES))
    def switch_policy(self, provider: str, policy: LimitPolicy) -> None:
        self.policy[provider] = policy

    @invariant()
    def views_agree(self) -> None:
        assert self.redis.peek(list(PROVIDERS)) == self.memory.peek(list(PROVIDERS))

    def teardown(self) -> None:
        delete_prefix(self.client, self.prefix)


def test_redis_limiter_matches_memory_model(redis_client: redis.Redis) -> None:
    LimitsModel.client = redis_client
    run_state_machine_as_test(
        LimitsModel,
        settings=settings(max_examples=80, stateful_step_count=40, deadline=None, database=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
    assert LimitsModel.refusals == {"rpm", "tpm", "in_flight", "booked"}
