"""The limiter's rules, its per-process glue, balancing and config, with a fake clock.

Pure rules run on ``MemoryLimiterBackend`` (the model the Lua is tested against in
``test_limits_model.py``); the Redis fallback test points a real client at a closed port.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis
from conftest import free_port

from flexitasks.config import load_settings
from flexitasks.errors import ConfigError
from flexitasks.limits import LimitPolicy, MemoryLimiterBackend, RedisLimiterBackend, policy_of
from flexitasks.limits.balance import order
from flexitasks.limits.limiter import Limiter, Refusal, Slot, estimate_tokens
from flexitasks.models import ChatRequest


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_rpm_admits_a_burst_then_one_request_per_interval(clock: Clock) -> None:
    store, policy = MemoryLimiterBackend(clock), LimitPolicy(rpm=120.0, burst=2.0)
    assert [store.check("p", policy, 0, f"l{i}").allowed for i in range(3)] == [True, True, False]
    refused = store.check("p", policy, 0, "l9")
    assert refused.refused == ("rpm",)
    assert refused.retry_after == pytest.approx(0.5)
    clock.t += 0.5
    assert store.check("p", policy, 0, "l10").allowed
    assert not store.check("p", policy, 0, "l11").allowed


def test_tpm_reservation_is_settled_with_the_real_usage(clock: Clock) -> None:
    store, policy = MemoryLimiterBackend(clock), LimitPolicy(tpm=1000)
    first = store.check("p", policy, 800, "a")
    assert first.allowed and first.reserved == 800
    assert store.check("p", policy, 300, "b").refused == ("tpm",)
    view = store.finish("p", policy, "a", reserved=800, actual=100)
    assert view.used(policy)["tpm"] == pytest.approx(100)
    assert store.check("p", policy, 300, "b").allowed


def test_a_request_larger_than_a_minute_of_tokens_reserves_the_whole_minute(clock: Clock) -> None:
    store, policy = MemoryLimiterBackend(clock), LimitPolicy(tpm=1000)
    assert store.check("p", policy, 5000, "a").reserved == 1000


def test_a_lease_of_a_dead_holder_expires(clock: Clock) -> None:
    store, policy = MemoryLimiterBackend(clock), LimitPolicy(max_in_flight=1, lease_ttl=30.0)
    assert store.check("p", policy, 0, "dead").allowed
    refused = store.check("p", policy, 0, "next")
    assert refused.refused == ("in_flight",) and refused.retry_after == pytest.approx(30.0)
    clock.t += 30.0
    assert store.check("p", policy, 0, "next").allowed


def test_a_refused_check_takes_nothing_from_the_other_limits(clock: Clock) -> None:
    store, policy = MemoryLimiterBackend(clock), LimitPolicy(rpm=60.0, burst=5.0, max_in_flight=1)
    assert store.check("p", policy, 0, "a").allowed
    for i in range(10):
        assert store.check("p", policy, 0, f"x{i}").refused == ("in_flight",)
    view = store.peek(["p"])["p"]
    assert view.used(policy)["rpm"] == pytest.approx(1.0)
    assert view.skips == {"in_flight": 10}


class Unreachable:
    def check(self, *args: object) -> object:
        raise AssertionError("an unlimited provider must cost no store call")

    finish = peek = check


def test_an_unlimited_provider_costs_no_store_call() -> None:
    limiter = Limiter({"p": LimitPolicy()}, Unreachable())  # type: ignore[arg-type]
    slot = limiter.admit("p", 100)
    assert isinstance(slot, Slot)
    limiter.finished(slot, 50)
    assert limiter.headroom("p") == 1.0


def test_an_in_flight_refusal_comes_back_soon_not_at_the_lease_expiry(clock: Clock) -> None:
    limiter = Limiter({"p": LimitPolicy(max_in_flight=1, lease_ttl=60.0)}, MemoryLimiterBackend(clock))
    assert isinstance(limiter.admit("p", 0), Slot)
    refusal = limiter.admit("p", 0)
    assert isinstance(refusal, Refusal) and refusal.limit == "in_flight"
    assert refusal.retry_after == pytest.approx(1.0)


def test_headroom_ages_with_time_and_describes_the_view(clock: Clock) -> None:
    limiter = Limiter({"p": LimitPolicy(rpm=60.0, burst=2.0)}, MemoryLimiterBackend(clock), clock=clock)
    limiter.admit("p", 0)
    limiter.admit("p", 0)
    assert limiter.headroom("p") == pytest.approx(0.0)
    assert limiter.describe("p") == "rpm 2.0/2 in use"
    clock.t += 1.0
    assert limiter.headroom("p") == pytest.approx(0.5)


def test_redis_unreachable_limits_this_process_alone() -> None:
    client = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    limiter = Limiter({"p": LimitPolicy(rpm=60.0, burst=1.0)}, RedisLimiterBackend(client, "t"))
    assert isinstance(limiter.admit("p", 0), Slot)
    assert limiter.degraded
    assert isinstance(limiter.admit("p", 0), Refusal)


def test_estimate_counts_size_framing_and_max_tokens() -> None:
    assert estimate_tokens(["x" * 400, "hi"], 100) == 101 + 8 + 100
    request = ChatRequest.parse([{"role": "user", "content": [
        {"type": "text", "text": "y" * 40},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 100_000}}]}], {})
    assert estimate_tokens([m.content for m in request.messages], 10) == 10 + 1000 + 4 + 10


class P:
    def __init__(self, name: str, priority: int, weight: float = 1.0) -> None:
        self.name, self.priority, self.weight = name, priority, weight


def test_balancing_shares_first_tries_by_weight_and_keeps_priorities() -> None:
    rng = random.Random(7)
    providers = [P("a", 1, 3.0), P("b", 1, 1.0), P("c", 2)]
    firsts = Counter()
    for _ in range(4000):
        ordered = order(providers, lambda _n: 1.0, rng)  # type: ignore[arg-type]
        assert ordered[-1].name == "c"
        firsts[ordered[0].name] += 1
    assert 0.72 < firsts["a"] / 4000 < 0.78


def test_balancing_prefers_the_provider_with_more_headroom() -> None:
    rng = random.Random(7)
    providers = [P("a", 1), P("b", 1)]
    room = {"a": 0.1, "b": 0.9}
    firsts = Counter(order(providers, room.__getitem__, rng)[0].name for _ in range(2000))  # type: ignore[arg-type]
    assert firsts["b"] > 4 * firsts["a"]


PROVIDER = '[[providers]]\nname = "a"\nkind = "openai"\nmodel = "m"\n'


def test_burst_defaults_to_one_seconds_worth(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text(PROVIDER + "rpm = 600\ntpm = 1000\nmax_in_flight = 3\n")
    policy = policy_of(load_settings(path).providers[0])
    assert (policy.rpm, policy.burst, policy.tpm, policy.max_in_flight) == (600.0, 10.0, 1000, 3)
    path.write_text(PROVIDER + "rpm = 30\n")
    assert policy_of(load_settings(path).providers[0]).burst == 1.0
    path.write_text(PROVIDER)
    assert not policy_of(load_settings(path).providers[0]).limited


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("rpm = 0\n", "rpm: Input should be greater than 0"),
        ("tpm = -5\n", "tpm: Input should be greater than 0"),
        ("max_in_flight = 0\n", "max_in_flight: Input should be greater than 0"),
        ("weight = 0\n", "weight: Input should be greater than 0"),
        ("rpm = 60\nburst = 61\n", "burst 61 is more than a minute's worth of rpm (60)"),
        ("burst = 3\n", "burst: Value error, burst needs rpm"),
    ],
)
def test_bad_limits_are_one_clear_message(tmp_path: Path, extra: str, needle: str) -> None:
    path = tmp_path / "f.toml"
    path.write_text(PROVIDER + extra)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert needle in str(err.value)
    assert "providers[0] (name='a')" in str(err.value)


def test_a_bad_limit_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    path.write_text(PROVIDER + "rpm = -1\n")
    proc = subprocess.run([sys.executable, "-m", "flexitasks.cli", "status"], capture_output=True, text=True,
                          env={"FLEXITASKS_CONFIG": str(path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 2
    assert "rpm: Input should be greater than 0" in proc.stderr and "Traceback" not in proc.stderr
