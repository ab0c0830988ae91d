"""RedisBreakerStore against a real Redis: races, window expiry, key hygiene, errors.

"Exactly one winner" is the property the fleet relies on: of many workers racing a
breaker over its threshold (or into HALF_OPEN), exactly one sees ``transitioned`` and
exactly one event is published. Needs Redis (the run's leased DB, see conftest.py);
skipped without it unless CI=true.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from conftest import REDIS_URL, delete_prefix, prefixed_keys, require_redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flexitasks.breaker import (
    Admit,
    BreakerPolicy,
    BreakerSnapshot,
    BreakerState,
    BreakerStoreError,
    CoolDown,
    Force,
    InvalidBreakerOperation,
    Operation,
    ProbeResult,
    RecordFailure,
    RedisBreakerStore,
    StoreResult,
)
from flexitasks.script_clock import PRELUDE, script_source

RUN_PREFIX = f"flexitasks-test-{uuid.uuid4().hex[:12]}"
N = 50


@dataclass
class Env:
    client: redis.Redis
    prefix: str
    channel: str

    def store(self, client: redis.Redis | None = None, **kwargs: Any) -> RedisBreakerStore:
        return RedisBreakerStore(client or self.client, self.prefix, self.channel, **kwargs)


@pytest.fixture
def env() -> Iterator[Env]:
    require_redis()
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    prefix = f"{RUN_PREFIX}-{uuid.uuid4().hex[:8]}"
    try:
        yield Env(client, prefix, f"{prefix}:events")
    finally:
        delete_prefix(client, prefix)
        client.close()


class Subscriber:
    """Collects the channel's events on a connection of its own."""

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.subscribe(channel)
        confirm = self.pubsub.get_message(timeout=2.0)
        assert confirm is not None and confirm["type"] == "subscribe"
        self.events: list[dict[str, Any]] = []

    def collect(
        self, until: Callable[[list[dict[str, Any]]], bool], timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Read until ``until(events)`` holds, then a little longer to catch strays."""
        deadline = time.monotonic() + timeout
        while not until(self.events) and time.monotonic() < deadline:
            self._read(0.05)
        quiet = time.monotonic() + 0.3
        while time.monotonic() < quiet:
            self._read(0.05)
        return self.events

    def _read(self, timeout: float) -> None:
        message = self.pubsub.get_message(timeout=timeout)
        if message is not None and message["type"] == "message":
            self.events.append(json.loads(message["data"]))

    def close(self) -> None:
        self.pubsub.close()


def race(env: Env, call: Callable[[RedisBreakerStore, int], StoreResult]) -> list[StoreResult]:
    """Run ``call`` in N threads, each with its own connection, released together."""
    stores = []
    for _ in range(N):
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
        client.ping()  # connect now so the barrier releases requests, not handshakes
        stores.append(env.store(client))
    barrier = threading.Barrier(N)
    results: list[StoreResult | None] = [None] * N
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = call(stores[i], i)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    for s in stores:
        s._client.close()
    assert not errors, errors
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def transitions(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == "transition"]


def test_exactly_one_winner_at_every_transition(env: Env) -> None:
    policy = BreakerPolicy(
        failure_threshold=5, failure_rate_threshold=0.5, window=60.0, recovery_timeout=0.3,
        max_recovery_timeout=5.0, success_threshold=2, jitter=0.0, probe_ttl=30.0,
    )
    sub = Subscriber(env.client, env.channel)
    try:
        # 1. 50 workers fail at once: one opens the breaker, four report plain failures.
        results = race(env, lambda s, i: s.record_failure("p", policy))
        winners = [r for r in results if r.transitioned]
        assert len(winners) == 1
        win = winners[0]
        assert win.previous is BreakerState.CLOSED and win.snapshot.state is BreakerState.OPEN
        assert win.snapshot.generation == 1 and win.snapshot.reason == "threshold"
        assert win.snapshot.open_until == pytest.approx(win.snapshot.now + 0.3)
        assert abs(win.snapshot.now - time.time()) < 5  # Redis TIME, in epoch seconds
        closed_seen = sorted(r.snapshot.failures for r in results if r.snapshot.state is BreakerState.CLOSED)
        assert closed_seen == [1, 2, 3, 4]

        events = sub.collect(lambda ev: len(ev) >= 2)
        assert len(transitions(events)) == 1
        assert sorted(e["failures"] for e in events if e["type"] == "failure") == [1]  # the first only
        assert transitions(events)[0] == {
            "v": 1, "type": "transition", "deployment": env.prefix, "provider": "p", "state": "open",
            "previous": "closed",
            "generation": 1, "open_until": win.snapshot.open_until, "probe_until": 0.0, "probe_owner": None,
            "reason": "threshold", "at": win.snapshot.now,
        }
        assert isinstance(transitions(events)[0]["at"], float)

        # 2. Recovery elapsed: 50 workers ask for the probe, one gets it (and the transition).
        time.sleep(max(0.0, win.snapshot.open_until - env.store().snapshot(["p"])["p"].now) + 0.05)
        sub.events.clear()
        results = race(env, lambda s, i: s.admit("p", policy, f"worker-{i}"))
        granted = [r for r in results if r.granted]
        assert len(granted) == 1 and granted[0].transitioned
        assert sum(r.transitioned for r in results) == 1
        holder = granted[0].snapshot.probe_owner
        assert holder is not None
        events = sub.collect(lambda ev: len(ev) >= 1)
        assert [(e["state"], e["probe_owner"], e["generation"]) for e in events] == [("half_open", holder, 2)]

        # 3. HALF_OPEN with a free token (first of two successes released it): one taker.
        store = env.store()
        released = store.probe_result("p", policy, holder, ok=True)
        assert not released.transitioned and released.snapshot.probe_owner is None
        sub.events.clear()
        results = race(env, lambda s, i: s.admit("p", policy, f"second-{i}"))
        granted = [r for r in results if r.granted]
        assert len(granted) == 1 and not any(r.transitioned for r in results)
        assert sub.collect(lambda ev: False, timeout=0.0) == []

        # 4. The second success closes it: one event.
        closed = store.probe_result("p", policy, granted[0].snapshot.probe_owner or "", ok=True)
        assert closed.transitioned and closed.snapshot.state is BreakerState.CLOSED
        assert closed.snapshot.failures == 0 and closed.snapshot.generation == 3
        events = sub.collect(lambda ev: len(ev) >= 1)
        assert [(e["state"], e["reason"]) for e in events] == [("closed", "probe_succeeded")]
    finally:
        sub.close()


def test_window_expires_failures_older_than_window(env: Env) -> None:
    t = [1_700_000_000.5]
    store = env.store(clock=lambda: t[0], rng=random.Random(0))
    policy = BreakerPolicy(failure_threshold=5, failure_rate_threshold=0.5, window=60.0)
    for _ in range(4):
        store.record_failure("p", policy)
    t[0] += 59.0
    assert store.snapshot(["p"])["p"].failures == 4
    t[0] += 1.0  # a full window after the failures: forgotten
    assert (store.snapshot(["p"])["p"].failures, store.snapshot(["p"])["p"].calls) == (0, 0)
    res = store.record_failure("p", policy)
    assert not res.transitioned and res.snapshot.failures == 1
    # stale buckets are pruned on write: only 'w' and the current bucket's two counters remain
    assert sorted(env.client.hkeys(store.window_key("p"))) == [b"c:1700000060", b"f:1700000060", b"w"]
    for _ in range(3):
        store.record_failure("p", policy)
    t[0] += 30.0
    assert store.record_failure("p", policy).transitioned  # 5 within the window


def test_keys_are_prefixed_windows_expire_and_states_persist(env: Env) -> None:
    before = set(env.client.scan_iter(count=1000))
    store = env.store()
    policy = BreakerPolicy(failure_threshold=2, window=12.5, recovery_timeout=0.0, jitter=0.0)
    store.record_failure("a", policy, successes=1)
    store.record_success("a", policy, successes=2)
    store.record_failure("b", policy)
    store.record_failure("b", policy)  # opens b: state hash written
    store.admit("b", policy, "w1")
    store.probe_result("b", policy, "w1", ok=False)
    store.cool_down("c", policy, 3.0)
    store.force("d", policy, BreakerState.FORCED_OPEN)
    store.snapshot(["a", "b", "c", "d", "never-touched"])

    ours = {k.decode() for k in env.client.scan_iter(match=f"{{{env.prefix}:*", count=1000)}
    assert ours == {  # hash-tagged per provider: one Redis Cluster slot per provider
        f"{{{env.prefix}:a}}:window", f"{{{env.prefix}:b}}:window",
        f"{{{env.prefix}:b}}:breaker", f"{{{env.prefix}:c}}:breaker", f"{{{env.prefix}:d}}:breaker",
    }
    for key in ours:  # windows expire; a state never does (issue 11 item 10: operator states, generations)
        ttl = env.client.ttl(key)
        if key.endswith(":breaker"):
            assert ttl == -1, (key, ttl)
        else:
            assert 0 < ttl <= math.ceil(policy.window) + 1, (key, ttl)
    foreign = {k.decode() for k in set(env.client.scan_iter(count=1000)) - before}
    assert {k for k in foreign if not k.startswith(("flexitasks-test-", "{flexitasks-test-"))} == set()


def test_snapshot_is_one_round_trip_with_redis_time(env: Env) -> None:
    calls: list[tuple[Any, ...]] = []

    class CountingRedis(redis.Redis):
        def execute_command(self, *args: Any, **options: Any) -> Any:
            calls.append(args)
            return super().execute_command(*args, **options)

    client = CountingRedis.from_url(REDIS_URL, socket_timeout=5)
    try:
        store = env.store(client)
        store.snapshot(["x"])  # loads the script on first use (NOSCRIPT -> SCRIPT LOAD)
        calls.clear()
        snaps = store.snapshot(["x", "y", "z"])
        assert len(calls) == 1 and calls[0][0] == "EVALSHA"
        assert list(snaps) == ["x", "y", "z"]
        assert all(s.state is BreakerState.CLOSED and s.generation == 0 for s in snaps.values())
        assert len({s.now for s in snaps.values()}) == 1 and abs(snaps["x"].now - time.time()) < 5
        assert store.snapshot([]) == {}
    finally:
        client.close()


def test_cool_down_in_open_extends_with_its_own_reason(env: Env) -> None:
    t = [1000.0]
    store = env.store(clock=lambda: t[0])
    policy = BreakerPolicy()
    sub = Subscriber(env.client, env.channel)
    try:
        first = store.cool_down("p", policy, 10.0)
        assert first.transitioned and first.snapshot.reason == "retry_after"
        assert not store.cool_down("p", policy, 5.0).transitioned  # never shortens
        extended = store.cool_down("p", policy, 30.0)
        assert extended.transitioned and extended.snapshot.reason == "retry_after_extended"
        assert (extended.snapshot.open_until, extended.snapshot.generation) == (1030.0, 2)
        events = sub.collect(lambda ev: len(ev) >= 2)
        assert [(e["reason"], e["open_until"]) for e in events] == [("retry_after", 1010.0),
                                                                     ("retry_after_extended", 1030.0)]
    finally:
        sub.close()


@pytest.mark.parametrize(
    "op",
    [
        RecordFailure(-1),
        Admit(""),
        ProbeResult("w", "yes"),  # type: ignore[arg-type]
        CoolDown(float("nan")),
        Force(BreakerState.OPEN),
    ],
    ids=repr,
)
def test_malformed_calls_raise_value_error_before_redis(env: Env, op: Operation) -> None:
    store = env.store()
    with pytest.raises(InvalidBreakerOperation) as info:
        store.run("p", BreakerPolicy(), op)
    assert isinstance(info.value, ValueError) and not isinstance(info.value, redis.RedisError)
    assert op.name in str(info.value) and info.value.op == op.name and info.value.provider == "p"
    assert prefixed_keys(env.client, env.prefix) == []


def test_the_scripts_reply_lists_the_snapshots_fields_in_order(env: Env) -> None:
    assert env.store().reply_fields() == list(BreakerSnapshot.REPLY_FIELDS)


@pytest.mark.parametrize(
    "package, name", [("flexitasks.breaker", "transition.lua"), ("flexitasks.limits", "limit.lua")]
)
def test_each_script_takes_the_clock_and_number_rules_from_the_one_prelude(package: str, name: str) -> None:
    source = script_source(package, name)
    prelude = importlib.resources.files("flexitasks").joinpath(PRELUDE).read_text("utf-8")
    assert source.startswith(prelude)
    for helper in ("fmt", "finite", "clock"):
        assert source.count(f"local function {helper}(") == 1, helper


@pytest.mark.parametrize(
    "argv",
    [
        ["explode"],
        ["record_failure", "not-a-time", "0.5"],
        ["admit", "", "0.0", "p", "ch", "5", "0.5", "60.0", "10.0", "60.0", "1", "0.1", "30.0", ""],
    ],
)
def test_script_guards_its_own_arguments(env: Env, argv: list[str]) -> None:
    """Even a caller bypassing Python's checks gets InvalidBreakerOperation, not ResponseError."""
    store = env.store()
    keys = [store.state_key("p"), store.window_key("p")]
    with pytest.raises(InvalidBreakerOperation, match="rejected by the script"):
        store._eval(argv[0], "p", keys, argv)
    assert prefixed_keys(env.client, env.prefix) == []


def test_bad_policy_is_rejected(env: Env) -> None:
    with pytest.raises(InvalidBreakerOperation, match="jitter"):
        env.store().record_failure("p", BreakerPolicy(jitter=2.0))


def test_unreachable_redis_raises_breaker_store_error() -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    store = RedisBreakerStore(dead, "flexitasks-test-dead", "flexitasks-test-dead:events")
    with pytest.raises(BreakerStoreError) as info:
        store.record_failure("openai", BreakerPolicy())
    assert not isinstance(info.value, ValueError)
    assert "record_failure" in str(info.value) and "openai" in str(info.value)
    assert isinstance(info.value.__cause__, redis.ConnectionError)
    with pytest.raises(BreakerStoreError, match="snapshot"):
        store.snapshot(["openai", "claude"])
