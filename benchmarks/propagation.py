"""Propagation: a breaker transition -> applied in every process's mirror.

For 4, 16 and 32 worker processes, side by side with raw Redis pub/sub measured in the
same run on the same process counts:

* flexitasks: the coordinator makes transitions through ``RedisBreakerStore``, the
  two kinds alternating: a trip (``record_failure`` x threshold; the last call makes
  the transition, after 4 ``failure`` events) and a reset (``force(CLOSED)``). Each
  worker builds its sync as a prefork child does and records, from a mirror listener
  placed first in the list, the wall time at which it applied each generation.
* raw pub/sub: the coordinator PUBLISHes a sequence number; each worker has a plain
  redis-py subscriber thread (``get_message(timeout=0.2)``, the same loop shape as
  flexitasks' sync thread) that records the wall time it read each number.

Latency = applied wall time - wall time just before the coordinator sent the command
(same host clock). Worker load, on the main thread while the sync thread waits:
idle; busy = calls to the ``secondary`` fake through the router in a loop, the fake
taking 200 ms to the first token (a worker serving streamed LLM calls: always in a
call, mostly waiting on the socket); saturated = the same calls answered at once,
back to back (every process CPU-bound; 2 cores).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import anthropic  # noqa: F401  (loaded before the workers fork: a fresh process importing
import openai  # noqa: F401     the SDKs on its first call costs seconds of CPU with 16 at once)
import redis

from benchmarks import CHANNEL, PRIMARY, REDIS_URL, SECONDARY
from benchmarks.common import (
    CTX,
    Fakes,
    Table,
    bench_router,
    chat_request,
    log,
    ms,
    percentile,
    pool,
    ratio,
    redis_client,
    settings,
    worker_runtime,
)
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.harness import wait_until

RAW_CHANNEL = CHANNEL + ":raw-bench"
APPLY_TIMEOUT = 2.0  # after this the coordinator moves on; late applies are still recorded
BUSY_FIRST_TOKEN = 0.2
MODES = ("idle", "busy", "saturated")


def _warm(router: Any) -> None:
    """One call before reporting ready: the SDK client is built lazily (~50 ms of CPU)."""
    if router is not None:
        router.run(chat_request(SECONDARY))


def _busy_loop(router: Any, stop: Any) -> int:
    request = chat_request(SECONDARY)
    calls = 0
    while not stop.is_set():
        with suppress(Exception):  # a failed call is still load
            router.run(request)
        calls += 1
    return calls


def _idle(stop: Any) -> int:
    stop.wait()
    return 0


def _flexitasks_worker(
    index: int, conn: Connection, busy: bool, last: Any, stop: Any, switch: float, quiet: bool
) -> None:
    if switch:
        sys.setswitchinterval(switch)
    runtime = worker_runtime()
    sync = runtime.sync
    if quiet:  # diagnostic: without the subscriber's heartbeat-on-change (a SET right after each apply)
        sync.mirror.listeners.remove(sync.subscriber._on_change)
    applied: dict[int, float] = {}

    def on_apply(provider: str, view: Any) -> None:
        if provider == PRIMARY:
            now = time.time()
            gen = view.snapshot.generation
            if gen not in applied:
                applied[gen] = now
                last[index] = gen

    sync.mirror.listeners.insert(0, on_apply)  # first: the subscriber's own listener does Redis I/O
    router = runtime.router if busy else None
    _warm(router)
    conn.send(("ready", os.getpid()))
    conn.recv()  # "go": no process loads the CPU while others still start
    calls = _busy_loop(router, stop) if busy else _idle(stop)
    conn.send(("result", {"applied": applied, "calls": calls}))


def _raw_worker(
    index: int, conn: Connection, busy: bool, last: Any, stop: Any, switch: float, quiet: bool
) -> None:
    from flexitasks.breaker.permit import OpenGate

    if switch:
        sys.setswitchinterval(switch)
    client = redis.Redis.from_url(REDIS_URL)
    pubsub = client.pubsub()
    pubsub.subscribe(RAW_CHANNEL)
    while pubsub.get_message(timeout=1.0) is None:
        pass
    applied: dict[int, float] = {}

    def listen() -> None:
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.2)
            if message is not None and message.get("type") == "message":
                now = time.time()
                seq = int(message["data"])
                applied.setdefault(seq, now)
                last[index] = seq

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    router = None
    if busy:  # the same HTTP load as flexitasks' busy workers, without any breaker
        router = bench_router(OpenGate())
    _warm(router)
    conn.send(("ready", os.getpid()))
    conn.recv()  # "go": no process loads the CPU while others still start
    calls = _busy_loop(router, stop) if busy else _idle(stop)
    thread.join(1)
    conn.send(("result", {"applied": applied, "calls": calls}))


@dataclass
class Outcome:
    system: str
    procs: int
    mode: str
    latencies: list[float]  # every (transition, process) pair that applied
    fleet: list[float]  # per transition: the last process to apply it
    missed: int  # (transition, process) pairs never applied
    calls_per_s: float
    by_kind: dict[str, list[float]]  # flexitasks: "trip" / "reset" latencies
    memory: dict[str, float] | None = None  # per process, MB (``memory=True``): rss, pss, uss


def process_memory(pids: list[int]) -> dict[str, float]:
    """Mean RSS, PSS and USS (private pages) per process in MB, from /proc/<pid>/smaps_rollup:
    PSS shares each page among the processes mapping it (forked workers share the SDKs)."""
    totals = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
    for pid in pids:
        fields: dict[str, float] = {}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if rest.strip().endswith("kB"):
                    fields[name] = float(rest.split()[0]) / 1024
        totals["rss"] += fields.get("Rss", 0.0)
        totals["pss"] += fields.get("Pss", 0.0)
        totals["uss"] += fields.get("Private_Clean", 0.0) + fields.get("Private_Dirty", 0.0)
    return {k: v / max(1, len(pids)) for k, v in totals.items()}


def _measure(
    system: str, n: int, mode: str, transitions: int, fakes: Fakes, switch: float = 0.0, quiet: bool = False,
    memory: bool = False,
) -> Outcome:
    raw = system == "raw"
    busy = mode != "idle"
    last = CTX.Array("q", [-1] * n, lock=False)
    stop = CTX.Event()
    target = _raw_worker if raw else _flexitasks_worker
    client = redis_client()
    store = RedisBreakerStore(client, key_prefix=settings.sync.key_prefix, channel=settings.sync.channel)
    policy = settings.breaker_policy(settings.provider(PRIMARY))
    store.force(PRIMARY, policy, BreakerState.CLOSED)
    if mode == "busy":
        fakes.admin[SECONDARY].set_fault(first_token_delay=BUSY_FIRST_TOKEN)
    sent: dict[int, tuple[float, str]] = {}
    try:
        with pool(n, target, busy, last, stop, switch, quiet) as workers:
            pids = workers.gather("ready", timeout=max(120, 2 * n))
            mem = process_memory(pids) if memory else None
            workers.send_all(("go",))
            time.sleep(0.3)
            started = time.monotonic()
            for k in range(transitions):
                if raw:
                    key, kind = k + 1, "publish"
                    t0 = time.time()
                    client.publish(RAW_CHANNEL, str(key))
                elif k % 2 == 0:  # trip as the fleet does: threshold failures, the last one transitions
                    for _ in range(policy.failure_threshold - 1):
                        store.record_failure(PRIMARY, policy)
                    t0 = time.time()
                    result = store.record_failure(PRIMARY, policy)
                    key, kind = result.snapshot.generation, "trip"
                    assert result.transitioned, f"record_failure did not open the breaker: {result}"
                else:
                    t0 = time.time()
                    result = store.force(PRIMARY, policy, BreakerState.CLOSED)
                    key, kind = result.snapshot.generation, "reset"
                    assert result.transitioned, f"force(CLOSED) did not transition: {result}"
                sent[key] = (t0, kind)
                wait_until(lambda key=key: min(last) >= key, APPLY_TIMEOUT, interval=0.002)
                time.sleep(random.uniform(0.02, 0.05))
            elapsed = time.monotonic() - started
            time.sleep(0.1)
            stop.set()
            results = workers.gather("result", timeout=60)
    finally:
        fakes.admin[SECONDARY].clear()
        store.force(PRIMARY, policy, BreakerState.CLOSED)
        client.close()
    latencies: list[float] = []
    fleet: list[float] = []
    by_kind: dict[str, list[float]] = {}
    missed = 0
    for key, (t0, kind) in sent.items():
        per = [r["applied"][key] - t0 for r in results if key in r["applied"]]
        missed += n - len(per)
        latencies += per
        by_kind.setdefault(kind, []).extend(per)
        if len(per) == n:
            fleet.append(max(per))
    calls = sum(r["calls"] for r in results)
    name = "redis pub/sub (raw)" if raw else "flexitasks"
    if switch:
        name += f" [switchinterval {switch * 1000:g} ms]"
    if quiet:
        name += " [no heartbeat on change]"
    return Outcome(name, n, mode, latencies, fleet, missed, calls / elapsed, by_kind, mem)


def _p(values: list[float], q: float) -> float:
    return percentile(values, q) if values else float("nan")


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    transitions = 10 if quick else 40
    counts = {"idle": (4, 16, 32), "busy": (4, 16), "saturated": (16,)} if quick else dict.fromkeys(
        MODES, (4, 16, 32))
    plan: list[tuple[str, int, str, dict[str, Any]]] = []
    for mode in MODES:
        for n in counts[mode]:
            plan += [("raw", n, mode, {}), ("flexitasks", n, mode, {})]
            if quick or n != 16:
                continue
            # Diagnostics, right beside their base rows: what dominates flexitasks' extra latency?
            if mode in ("idle", "busy"):
                plan.append(("flexitasks", n, mode, {"quiet": True}))
            else:
                plan += [(system, n, mode, {"switch": 0.001}) for system in ("raw", "flexitasks")]
    outcomes: list[Outcome] = []
    for system, n, mode, extra in plan:
        log(f"propagation: {system}, {n} processes, {mode} {extra or ''}")
        outcomes.append(_measure(system, n, mode, transitions, fakes, **extra))

    table = Table(
        f"Propagation: transition -> applied in each process (ms), {transitions} transitions per row",
        ["system", "procs", "worker load", "samples", "p50", "p99", "max", "all procs p50", "all procs max",
         "missed", "p50 / raw", "p99 / raw", "calls/s"],
    )
    raw_by = {(o.procs, o.mode, "switch" in o.system): o for o in outcomes if o.system.startswith("redis")}
    for o in outcomes:
        base = raw_by[(o.procs, o.mode, "switch" in o.system)]
        p50, p99 = _p(o.latencies, 50), _p(o.latencies, 99)
        own = o is base
        table.add(
            o.system, o.procs, o.mode, len(o.latencies), ms(p50), ms(p99), ms(_p(o.latencies, 100)),
            ms(_p(o.fleet, 50)), ms(_p(o.fleet, 100)), o.missed,
            "" if own else ratio(p50, _p(base.latencies, 50)),
            "" if own else ratio(p99, _p(base.latencies, 99)),
            f"{o.calls_per_s:.0f}" if o.mode != "idle" else "",
        )
    kinds = Table(
        "Propagation, flexitasks by transition kind (ms): trip = 5th record_failure (after 4 failure "
        "events), reset = force(CLOSED)",
        ["system", "procs", "worker load", "trip p50", "trip p99", "reset p50", "reset p99", "raw p50",
         "raw p99"],
    )
    for o in outcomes:
        if o.system.startswith("flexitasks") and "switch" not in o.system:
            base = raw_by[(o.procs, o.mode, False)]
            trip, reset = o.by_kind.get("trip", []), o.by_kind.get("reset", [])
            kinds.add(o.system, o.procs, o.mode, ms(_p(trip, 50)), ms(_p(trip, 99)), ms(_p(reset, 50)),
                      ms(_p(reset, 99)), ms(_p(base.latencies, 50)), ms(_p(base.latencies, 99)))
    flex16 = {o.mode: o for o in outcomes if o.system == "flexitasks" and o.procs == 16}
    idle99, busy99 = _p(flex16["idle"].latencies, 99), _p(flex16["busy"].latencies, 99)
    table.notes += [
        f"Targets at 16 processes: p99 <= 3 ms idle (measured {ms(idle99)} ms: "
        f"{'met' if idle99 <= 0.003 else 'NOT met'}), p99 <= 10 ms busy (measured {ms(busy99)} ms: "
        f"{'met' if busy99 <= 0.010 else 'NOT met'}).",
        "Latency = wall time the process applied the generation (first mirror listener) - wall time just "
        "before the coordinator sent the Lua call / PUBLISH; samples = transitions x processes. 'all procs' "
        "= per transition, the last process to apply it.",
        f"busy: each worker calls the secondary fake through the router in a loop, the fake taking "
        f"{BUSY_FIRST_TOKEN * 1000:.0f} ms to the first token; saturated: the same calls answered at once, "
        "back to back. Raw workers make the same calls without a breaker. 2 cores for all the processes.",
        ("--quick: 32 processes idle only, saturated at 16 only. " if quick else "")
        + "Diagnostic rows (full run only), not product settings: [no heartbeat on change] = the "
        "subscriber's mirror listener that writes the process view to Redis right after each applied "
        "event is removed; [switchinterval 1 ms] = sys.setswitchinterval(0.001) in each worker "
        "(CPython default: 5 ms).",
    ]
    return [table, kinds]
