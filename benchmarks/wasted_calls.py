"""Wasted calls: how many requests a provider that starts failing still receives.

16 worker processes call the ``primary`` fake in a loop (OpenAI SDK over HTTP, one call
per iteration, no retries). After a healthy warm-up the coordinator makes the fake
answer 500 (at once, or after 100 ms); the count is taken from the fake's own request
log (entries answered with the fault), until every process has observed the breaker
open plus a grace period. Same processes, load and threshold (5) for:

* flexitasks: a ``Router`` with the real ``OpenAIAdapter`` and the process's
  ``FleetGate`` from ``flexitasks.sync.process`` (built as a prefork child does);
  "observed open" = the process's mirror left CLOSED (mirror listener);
* pybreaker in memory per process, and pybreaker with ``CircuitRedisStorage`` shared
  by the 16 processes (``anchors.py``); "observed open" = that process's breaker
  changed to open (pybreaker listener).

"Sent after open" counts calls whose send time (recorded in the worker just before
the adapter is called) is later than the first moment the breaker was open anywhere
in the fleet (flexitasks: the Lua script's Redis TIME; pybreaker: the opener's clock).
A process whose call was refused sleeps 1 ms before its next iteration, for every
system alike, so refusals do not spin a CPU the other processes need.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis

from benchmarks import PRIMARY, REDIS_URL, anchors
from benchmarks.common import (
    CTX,
    Fakes,
    LabelledGate,
    Table,
    TimedAdapter,
    bench_router,
    chat_request,
    log,
    median,
    ms,
    num,
    pool,
    redis_client,
    settings,
    worker_sync,
)
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.errors import FlexitasksError
from flexitasks.harness import wait_until
from flexitasks.providers import build_adapter

FLEXITASKS = "flexitasks"
SYSTEMS = (FLEXITASKS, anchors.MEMORY, anchors.REDIS)
PROCESSES = 16
WARM_UP = 0.4
GRACE = 0.25
OPEN_TIMEOUT = 8.0


def _worker(index: int, conn: Connection, stop: Any, open_wall: Any, open_store: Any, gen_seen: Any) -> None:
    sync = worker_sync()
    armed = [False]

    def on_view(provider: str, view: Any) -> None:
        if provider != PRIMARY:
            return
        gen_seen[index] = view.snapshot.generation
        if armed[0] and view.snapshot.state is not BreakerState.CLOSED and open_wall[index] == 0:
            open_wall[index] = time.time()
            open_store[index] = view.snapshot.now

    sync.mirror.listeners.insert(0, on_view)
    gen_seen[index] = sync.mirror.get(PRIMARY).snapshot.generation
    gate = LabelledGate(sync)
    adapter = TimedAdapter(build_adapter(settings.provider(PRIMARY)), gate.label)
    sends = adapter.sends
    router = bench_router(gate, adapter)
    request = chat_request(PRIMARY)
    adapter.inner.complete(request, 10.0)  # build the SDK client now, not during a run
    client = redis.Redis.from_url(REDIS_URL)

    def opened(at: float) -> None:
        if open_wall[index] == 0:
            open_wall[index] = at

    conn.send(("ready", os.getpid()))
    while True:
        message = conn.recv()
        if message[0] == "exit":
            return
        system = message[1]
        open_wall[index] = open_store[index] = 0.0
        sends.clear()
        cb = None if system == FLEXITASKS else anchors.make_breaker(system, client, on_open=opened)
        armed[0] = system == FLEXITASKS
        conn.send(("started", None))
        refused = 0
        while not stop.is_set():
            before = len(sends)
            if cb is None:
                with suppress(FlexitasksError):
                    router.run(request)
            else:
                anchors.call(cb, adapter.complete, request)
            if len(sends) == before:
                refused += 1
                time.sleep(0.001)
        armed[0] = False
        conn.send(("done", {"sends": list(sends), "refused": refused}))


@dataclass
class RunResult:
    system: str
    wasted: int  # requests answered with the fault
    before_all_open: int  # of which received before the last process observed open
    sent_after_open: int  # by the workers' clocks, after the first moment the breaker was open
    late_by: list[tuple[float, str]]  # for those: how long after that moment (s), sender's mirror state
    to_open: float  # fault set -> first process observed open (s)
    to_all_open: float  # fault set -> last process observed open (s); nan if not all did
    all_open: bool


def _one_run(workers: Any, system: str, latency: float, fakes: Fakes, arrays: tuple[Any, Any, Any, Any],
             store: RedisBreakerStore, client: redis.Redis) -> RunResult:
    stop, open_wall, open_store, gen_seen = arrays
    admin = fakes.admin[PRIMARY]
    policy = settings.breaker_policy(settings.provider(PRIMARY))
    admin.clear()
    gen = store.force(PRIMARY, policy, BreakerState.CLOSED).snapshot.generation
    if not wait_until(lambda: min(gen_seen) >= gen, 5.0, interval=0.01):
        raise RuntimeError("not every process saw the breaker reset within 5 s")
    anchors.reset_shared(client)
    stop.clear()
    workers.send_all(("run", system))
    workers.gather("started", timeout=30)
    time.sleep(WARM_UP)
    seq0 = admin.stats()["requests"]
    t_set = time.time()
    admin.set_fault(status=500, latency=latency)
    all_open = wait_until(lambda: min(open_wall) > 0, OPEN_TIMEOUT, interval=0.005)
    walls = [w for w in open_wall if w > 0]
    time.sleep(GRACE + latency)
    stop.set()
    done = workers.gather("done", timeout=60)
    admin.clear()
    entries = [e for e in admin.requests(since=seq0) if e["fault"]]
    if system == FLEXITASKS:
        opened_at = min((s for s in open_store if s > 0), default=float("nan"))
    else:
        opened_at = min(walls, default=float("nan"))
    last_open = max(walls, default=float("nan"))
    late = sorted((s - opened_at, view) for d in done for s, view in d["sends"] if s > opened_at)
    return RunResult(
        system=system,
        wasted=len(entries),
        before_all_open=sum(1 for e in entries if e["t"] <= last_open) if all_open else len(entries),
        sent_after_open=len(late),
        late_by=late,
        to_open=min(walls, default=float("nan")) - t_set,
        to_all_open=last_open - t_set if all_open else float("nan"),
        all_open=all_open,
    )


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    runs = {0.0: 3, 0.1: 2} if quick else {0.0: 5, 0.1: 5}
    stop = CTX.Event()
    open_wall = CTX.Array("d", PROCESSES, lock=False)
    open_store = CTX.Array("d", PROCESSES, lock=False)
    gen_seen = CTX.Array("q", [-1] * PROCESSES, lock=False)
    arrays = (stop, open_wall, open_store, gen_seen)
    client = redis_client()
    store = RedisBreakerStore(client, key_prefix=settings.sync.key_prefix, channel=settings.sync.channel)
    results: dict[tuple[float, str], list[RunResult]] = {}
    try:
        with pool(PROCESSES, _worker, *arrays) as workers:
            workers.gather("ready", timeout=120)
            for latency, n_runs in runs.items():
                for i in range(n_runs):
                    for system in SYSTEMS:
                        log(f"wasted calls: {system}, 500 after {latency * 1000:.0f} ms, "
                            f"run {i + 1}/{n_runs}")
                        r = _one_run(workers, system, latency, fakes, arrays, store, client)
                        results.setdefault((latency, system), []).append(r)
    finally:
        store.force(PRIMARY, settings.breaker_policy(settings.provider(PRIMARY)), BreakerState.CLOSED)
        anchors.reset_shared(client)
        fakes.admin[PRIMARY].clear()
        client.close()
    return [_table(results, latency, n_runs) for latency, n_runs in runs.items()]


def _table(results: dict[tuple[float, str], list[RunResult]], latency: float, runs: int) -> Table:
    case = "answered at once" if latency == 0 else f"answered after {latency * 1000:.0f} ms"
    table = Table(
        f"Wasted calls: 16 processes, threshold 5, provider starts failing (500 {case}), {runs} runs",
        ["system", "wasted median", "min", "max", "per run", "sent after open (median / max)",
         "received before all open (median)", "fault -> first open (ms)", "fault -> all open (ms)",
         "vs flexitasks"],
    )
    flex = median([r.wasted for r in results[(latency, FLEXITASKS)]])
    for system in SYSTEMS:
        rs = results[(latency, system)]
        wasted = [r.wasted for r in rs]
        after = [r.sent_after_open for r in rs]
        table.add(
            system, num(median(wasted)), min(wasted), max(wasted), " ".join(str(w) for w in wasted),
            f"{num(median(after))} / {max(after)}", num(median([r.before_all_open for r in rs])),
            ms(median([r.to_open for r in rs]), 1), ms(median([r.to_all_open for r in rs]), 1)
            + ("" if all(r.all_open for r in rs) else " (not all opened)"),
            "" if system == FLEXITASKS else f"{median(wasted) / flex:.2f}x" if flex else "-",
        )
    med = flex
    after_flex = [r.sent_after_open for r in results[(latency, FLEXITASKS)]]
    if latency == 0:
        verdict = "met" if med <= 17 else "NOT met"
        table.notes.append(f"Target: flexitasks median <= 17 (measured {num(med)}: {verdict}).")
    else:
        table.notes.append(
            f"Target: flexitasks sends no call after the breaker opened (measured {num(median(after_flex))} "
            f"median, {max(after_flex)} max: {'met' if max(after_flex) == 0 else 'NOT met'})."
        )
    late = sorted(x for r in results[(latency, FLEXITASKS)] for x in r.late_by)
    if late:
        views = Counter(view for _, view in late)
        table.notes.append(
            f"flexitasks' calls sent after the transition: {len(late)} in all runs, {ms(late[0][0], 2)}-"
            f"{ms(late[-1][0], 2)} ms after it; the sender's own mirror showed "
            + ", ".join(f"{v} for {n}" for v, n in views.items())
            + " (closed = that process had not applied the transition yet)."
        )
    table.notes += [
        "wasted = requests the fake answered with the fault (its own log), from the fault until every "
        f"process observed the breaker open + {GRACE * 1000:.0f} ms (+ the fault latency).",
        "sent after open = calls sent (worker clock, just before the SDK call) after the first moment the "
        "breaker was open anywhere (flexitasks: Redis TIME of the transition; pybreaker: the opener's "
        "clock).",
    ]
    return table
