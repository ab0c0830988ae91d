"""A network partition between one worker and the breaker Redis (``tests/tcp_proxy.py``).

The cut-off worker reaches the broker directly (it keeps receiving tasks) but its breaker
Redis only through a proxy that blackholes every byte on demand. Shown: while cut off it
keeps serving on local breakers; the rest of the fleet (the session worker) opens the
failing provider's breaker and recovers it as usual; after the partition heals the cut-off
worker holds the authoritative state again within ``resync_interval`` (plus its
reconnect backoff and a view write: the margin of the wait below).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import (
    REDIS_HOST,
    REDIS_PORT,
    RUN_ID,
    SETTINGS,
    TEST_DB,
    WORKDIR,
    start_worker,
    stop_worker,
    wait_for_worker,
)
from tcp_proxy import BlackholeProxy

from flexitasks import chat_task
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.fleet import fleet_status
from flexitasks.harness import wait_until

HOST = socket.gethostname()
CUT_QUEUE = f"cut-{RUN_ID}"
CUT_NODE, FLEET_NODE = f"cut@{HOST}", f"w1@{HOST}"
MESSAGES = [{"role": "user", "content": "Summarise this ticket"}]
RESYNC = SETTINGS.sync.resync_interval
RECONNECT_BACKOFF_MAX = 2.0  # the subscriber's (sync/subscriber.py)


@pytest.fixture(scope="module")
def cut_worker(worker) -> Iterator[BlackholeProxy]:
    """A worker whose breaker Redis is behind the proxy (socket_timeout 0.5 s); broker direct."""
    with BlackholeProxy(REDIS_PORT, REDIS_HOST) as proxy:
        sync = SETTINGS.sync.model_copy(update={
            "redis_url": f"redis://127.0.0.1:{proxy.port}/{TEST_DB}", "socket_timeout": 0.5})
        celery = SETTINGS.celery.model_copy(update={"queue": CUT_QUEUE})
        config = WORKDIR / "flexitasks-cut.toml"
        config.write_text(SETTINGS.model_copy(update={"sync": sync, "celery": celery}).to_toml())
        proc = start_worker(name="cut", concurrency=2, config=config)
        try:
            wait_for_worker(CUT_NODE)
            yield proxy
        finally:
            stop_worker(proc)


def send(n: int, queue: str | None = None) -> list[dict[str, Any]]:
    route = {"queue": queue} if queue else {}
    pending = [chat_task.apply_async((MESSAGES,), {}, **route) for _ in range(n)]
    return [r.get(timeout=60) for r in pending]


def agrees(node: str, processes: int, state: str) -> Callable[[], dict[str, Any] | None]:
    def probe() -> dict[str, Any] | None:
        status = fleet_status(SETTINGS)
        auth = status["providers"]["primary"]
        views = [p for p in status["processes"] if p.get("node") == node]
        ok = auth["state"] == state and len(views) == processes and all(
            (v["breakers"]["primary"]["state"], v["breakers"]["primary"]["generation"]) == (state, auth["generation"])
            for v in views)
        return status if ok else None

    return probe


def test_a_cut_off_worker_serves_on_local_breakers_and_resyncs_after_the_partition_heals(
    clean, cut_worker, redis_client
):
    proxy = cut_worker
    wait_until(agrees(CUT_NODE, 3, "closed"), 15, what="the cut worker's views before the partition")
    proxy.blackhole()
    clean["primary"].admin.set_fault(status=500)

    # The cut-off worker keeps serving: its calls fail over on breakers of its own.
    cut_answers = send(6, queue=CUT_QUEUE)
    assert all(a["provider"] == "secondary" for a in cut_answers)
    log = (WORKDIR / "worker-cut.log").read_text(errors="replace")
    assert "serving with local-only breakers" in log

    # The rest of the fleet opens the breaker in Redis, as usual ...
    send(12)
    opened = wait_until(agrees(FLEET_NODE, 5, "open"), 15, what="open in the fleet")["providers"]["primary"]
    # ... and recovers it with a probe once the provider is healthy.
    clean["primary"].admin.set_fault(None)
    wait_until(lambda: fleet_status(SETTINGS)["providers"]["primary"]["now"] >= opened["open_until"] + 0.05, 15,
               what="the open interval to pass")
    send(8)
    wait_until(agrees(FLEET_NODE, 5, "closed"), 15, what="closed again in the fleet")
    # An operator trip meanwhile: the state the cut-off worker must learn after the partition.
    store = RedisBreakerStore(redis_client, key_prefix=SETTINGS.sync.key_prefix, channel=SETTINGS.sync.channel)
    store.force("primary", SETTINGS.breaker_policy(SETTINGS.provider("primary")), BreakerState.FORCED_OPEN)
    wait_until(agrees(FLEET_NODE, 5, "forced_open"), 15, what="the trip in the fleet")
    assert proxy.dropped_bytes > 0  # the partition really swallowed the cut worker's traffic

    healed = time.monotonic()
    proxy.heal()
    wait_until(agrees(CUT_NODE, 3, "forced_open"), RESYNC + RECONNECT_BACKOFF_MAX + 3.0,
               what="the cut-off worker to hold the authoritative state after healing")
    print(f"\npartition healed: cut-off worker on the authoritative state after {time.monotonic() - healed:.2f} s")
    answers = send(4, queue=CUT_QUEUE)
    for answer in answers:  # and acts on it
        assert [(a["provider"], a["outcome"]) for a in answer["attempts"]] == [("primary", "skipped"),
                                                                              ("secondary", "ok")]
