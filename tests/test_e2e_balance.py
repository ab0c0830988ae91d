"""Weighted balancing at equal priority, end to end: a real worker, real Redis, fake providers.

``limits.balance`` is unit-tested with a seeded draw; here the shares are counted by the
fakes' own request logs, through the whole path (task, router, adapters, HTTP). The worker
reads a config of its own (``heavy`` weight 3 and ``light`` weight 1 at priority 1,
``backup`` at priority 2, no limits: headroom plays no part) and consumes a queue of its
own, so the session's worker never takes these tasks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import KEY_PREFIX, RUN_ID, SETTINGS, WORKDIR, start_worker, stop_worker, wait_for_worker

from flexitasks import app
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.config import Settings
from flexitasks.fake_provider import FakeProvider

QUEUE = f"balance-{RUN_ID}"
WORKER = f"bal-{RUN_ID}"
NAMES = ("heavy", "light", "backup")
TIMEOUTS = {"timeout": 10.0, "connect_timeout": 1.0, "first_token_timeout": 5.0, "stall_timeout": 2.0}
CALLS = 100
"""Heavy's share of first tries is 3/4: over 100 calls its standard deviation is 4.3 %, so
the 60-90 % bounds are 3.5 deviations away (about one failure in 2000 runs)."""


def settings(fakes: dict[str, FakeProvider]) -> Settings:
    shape = {"heavy": (1, 3.0), "light": (1, 1.0), "backup": (2, 1.0)}
    return Settings.model_validate({
        **SETTINGS.model_dump(exclude={"providers", "source"}),
        "providers": [
            {"name": name, "kind": "openai", "model": f"m-{name}", "priority": priority, "weight": weight,
             "base_url": fakes[name].openai_base_url, **TIMEOUTS}
            for name, (priority, weight) in shape.items()
        ],
    })


@pytest.fixture(scope="module")
def balanced(redis_client: redis.Redis) -> Iterator[tuple[dict[str, FakeProvider], Settings]]:
    fakes = {name: FakeProvider(name=name).start() for name in NAMES}
    config = WORKDIR / "balance.toml"
    ours = settings(fakes)
    config.write_text(ours.to_toml())
    worker = start_worker("-Q", QUEUE, name=WORKER, concurrency=2, config=config)
    try:
        wait_for_worker(f"{WORKER}@")
        yield fakes, ours
    finally:
        stop_worker(worker)
        for fake in fakes.values():
            fake.stop()


@pytest.fixture
def fresh(balanced: tuple[dict[str, FakeProvider], Settings], redis_client: redis.Redis) -> dict[str, FakeProvider]:
    """Healthy fakes with empty logs, every breaker of these providers closed."""
    fakes, ours = balanced
    store = RedisBreakerStore(redis_client, key_prefix=KEY_PREFIX, channel=ours.sync.channel)
    for fake in fakes.values():
        fake.admin.reset()
    for provider in ours.providers:
        store.force(provider.name, ours.breaker_policy(provider), BreakerState.CLOSED)
    return fakes


def send() -> Any:
    return app.send_task("flexitasks.chat", args=[[{"role": "user", "content": "hi"}]], queue=QUEUE)


def test_equal_priority_providers_share_calls_by_weight(fresh: dict[str, FakeProvider]) -> None:
    results = [r.get(timeout=60) for r in [send() for _ in range(CALLS)]]
    calls = {name: len(fresh[name].admin.requests()) for name in NAMES}
    assert calls["backup"] == 0  # the lower priority is never a first try
    assert calls["heavy"] + calls["light"] == CALLS  # one call each: nothing failed, nothing retried
    assert [r["provider"] for r in results].count("heavy") == calls["heavy"]
    assert 0.6 <= calls["heavy"] / CALLS <= 0.9, calls


def test_when_both_fail_failover_still_goes_down_the_priorities(fresh: dict[str, FakeProvider]) -> None:
    fresh["heavy"].admin.set_fault(status=500)
    fresh["light"].admin.set_fault(status=500)
    # Two requests: at most 4 failed calls per provider, below the breaker's threshold of 5,
    # so each request really calls both before going down.
    results = [r.get(timeout=60) for r in [send(), send()]]
    for result in results:
        tried = [a["provider"] for a in result["attempts"]]
        assert result["provider"] == "backup"
        assert tried[-1] == "backup" and result["attempts"][-1]["outcome"] == "ok"
        assert set(tried[:-1]) == {"heavy", "light"}, tried
    assert len(fresh["backup"].admin.requests()) == 2
    assert all(fresh[name].admin.stats()["requests"] >= 2 for name in ("heavy", "light"))
