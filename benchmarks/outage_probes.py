"""During an outage: how many requests reach the dead provider, fleet-wide, per recovery interval.

16 worker processes hammer the router (``primary`` first, failing over to
``secondary``) for the whole outage, each built as a prefork child does. The
``primary`` fake answers 500 for 60 s (20 s with ``--quick``, ``recovery_timeout`` and
``max_recovery_timeout`` scaled by the same factor); the coordinator subscribes to the
breaker channel to log every transition, and the fake's own log gives every request it
received. Each worker also records, for every call it sends to ``primary``, what its own
mirror said at that moment: CLOSED (it had not applied the OPEN yet: the opening burst,
or a late learner), "probe" (it holds the half-open token), or anything else (a call
sent against its own breaker: a bug). Probes are then counted per recovery interval.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import threading
import time
from collections import Counter
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

import redis

from benchmarks import CHANNEL, PRIMARY, REDIS_URL
from benchmarks.common import (
    CTX,
    Fakes,
    LabelledGate,
    Table,
    TimedAdapter,
    bench_router,
    chat_request,
    log,
    ms,
    percentile,
    pool,
    redis_client,
    settings,
    worker_sync,
)
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.errors import FlexitasksError
from flexitasks.providers import build_adapter

PROCESSES = 16


def _worker(index: int, conn: Connection, stop: Any, recovery: float, max_recovery: float) -> None:
    sync = worker_sync()
    sync.gate.policies = {  # what [breaker] recovery_timeout / max_recovery_timeout would give
        name: dataclasses.replace(p, recovery_timeout=recovery, max_recovery_timeout=max_recovery)
        for name, p in sync.gate.policies.items()
    }
    applied: dict[int, float] = {}

    def on_apply(provider: str, view: Any) -> None:
        if provider == PRIMARY:
            applied.setdefault(view.snapshot.generation, time.time())

    sync.mirror.listeners.insert(0, on_apply)
    gate = LabelledGate(sync)
    primary = TimedAdapter(build_adapter(settings.provider(PRIMARY)), gate.label)
    router = bench_router(gate, primary)  # the primary's sends recorded
    request = chat_request()
    router.run(request)  # build the SDK clients before the outage
    conn.send(("ready", os.getpid()))
    conn.recv()  # "go"
    primary.sends.clear()
    calls = 0
    while not stop.is_set():
        with suppress(FlexitasksError):
            router.run(request)
        calls += 1
    conn.send(("done", {"calls": calls, "sends": primary.sends, "applied": applied}))


Events = list[tuple[float, dict[str, Any]]]


def _listen(events: Events, stop: threading.Event, ready: threading.Event) -> None:
    pubsub = redis.Redis.from_url(REDIS_URL).pubsub()
    pubsub.subscribe(CHANNEL)
    while pubsub.get_message(timeout=1.0) is None:
        pass
    ready.set()
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.2)
        if message is not None and message.get("type") == "message":
            event = json.loads(message["data"])
            if event.get("type") == "transition" and event.get("provider") == PRIMARY:
                events.append((time.time(), event))
    pubsub.close()


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    outage = 20.0 if quick else 60.0
    scale = outage / 60.0
    base = settings.breaker
    recovery, max_recovery = base.recovery_timeout * scale, base.max_recovery_timeout * scale
    admin = fakes.admin[PRIMARY]
    client = redis_client()
    store = RedisBreakerStore(client, key_prefix=settings.sync.key_prefix, channel=settings.sync.channel)
    policy = settings.breaker_policy(settings.provider(PRIMARY))
    store.force(PRIMARY, policy, BreakerState.CLOSED)
    admin.clear()
    stop = CTX.Event()
    events: Events = []
    listen_stop, listening = threading.Event(), threading.Event()
    try:
        with pool(PROCESSES, _worker, stop, recovery, max_recovery) as workers:
            workers.gather("ready", timeout=120)
            workers.send_all(("go",))
            listener = threading.Thread(target=_listen, args=(events, listen_stop, listening), daemon=True)
            listener.start()  # after the fork: no thread may cross it
            listening.wait(10)
            time.sleep(0.5)
            log(f"outage probes: primary answers 500 for {outage:.0f} s, 16 processes hammering")
            seq0 = admin.stats()["requests"]
            t0 = time.time()
            admin.set_fault(status=500)
            time.sleep(outage)
            admin.clear()
            t1 = time.time()
            stop.set()
            done = workers.gather("done", timeout=60)
            listen_stop.set()
            listener.join(2)
    finally:
        admin.clear()
        store.force(PRIMARY, policy, BreakerState.CLOSED)
        client.close()
    entries = [e for e in admin.requests(since=seq0) if e["fault"] and e["t"] <= t1]
    calls = sum(d["calls"] for d in done)
    sends = sorted((t, view) for d in done for t, view in d["sends"] if t0 <= t <= t1)
    lags: list[float] = []
    unapplied = 0
    for _, ev in events:
        per = [d["applied"][ev["generation"]] - ev["at"] for d in done if ev["generation"] in d["applied"]]
        lags += per
        unapplied += len(done) - len(per)
    tables = _tables(entries, sends, events, t0, t1, calls, outage, recovery, max_recovery)
    tables[0].notes.append(
        f"Propagation during the outage (each transition -> applied in each of the {PROCESSES} hammering "
        f"processes, {len(lags)} samples): p50 {ms(percentile(lags, 50))} ms, p99 "
        f"{ms(percentile(lags, 99))} ms, max {ms(max(lags, default=float('nan')))} ms; never applied "
        f"(superseded first): {unapplied}."
    )
    return tables


def _tables(entries: list[dict[str, Any]], sends: list[tuple[float, str]], events: Events, t0: float,
            t1: float, calls: int, outage: float, recovery: float, max_recovery: float) -> list[Table]:
    opens = [ev for _, ev in events if ev["state"] == "open"]
    halves = [ev for _, ev in events if ev["state"] == "half_open"]
    first_open = opens[0]["at"] if opens else float("inf")
    views = Counter(view for _, view in sends)
    late = [t for t, view in sends if view == "closed" and t >= first_open]
    against = [t for t, view in sends if view not in ("closed", "probe")]
    detail = Table(
        "Outage: each recovery interval (times in s since the outage began)",
        ["#", "opened at", "planned open (s)", "half-open at", "sent by processes not yet told",
         "sent against own OPEN", "probes sent", "since previous probe (s)", "reason"],
    )
    probe_times: list[float] = []
    per_interval: list[int] = []
    for i, ev in enumerate(opens):
        at = ev["at"]
        next_open = opens[i + 1]["at"] if i + 1 < len(opens) else t1
        half_at = next((h["at"] for h in halves if at <= h["at"] < next_open), None)
        untold = [t for t, view in sends if view == "closed" and at <= t < next_open]
        bad = [t for t in against if at <= t < next_open]
        probes = [t for t, view in sends if view == "probe" and at <= t < next_open]
        previous = probe_times[-1] if probe_times else None
        probe_times += probes
        if half_at is not None:
            per_interval.append(len(probes))
        detail.add(
            i + 1, f"{at - t0:.2f}", f"{ev['open_until'] - at:.2f}",
            f"{half_at - t0:.2f}" if half_at is not None else f"(not before {t1 - t0:.0f})",
            len(untold), len(bad), len(probes) if half_at is not None else "-",
            f"{probes[0] - previous:.2f}" if probes and previous is not None else "-", ev["reason"],
        )
    last_open = opens[-1] if opens else None
    next_probe = max(0.0, last_open["open_until"] - t1) if last_open else float("nan")
    summary = Table(
        f"Outage of {outage:.0f} s: requests reaching the dead provider, fleet-wide ({PROCESSES} processes "
        f"hammering; recovery_timeout {recovery:.2f} s doubling to {max_recovery:.0f} s, jitter "
        f"{settings.breaker.jitter:g})",
        ["system", "requests (fake's log)", "opening burst", "after OPEN, sender not yet told",
         "sent against own OPEN", "probes", "max probes / interval", "probe times (s)",
         "intervals between probes (s)", "calls served / s", "next probe after return (s)"],
    )
    gaps = [b - a for a, b in itertools.pairwise(probe_times)]
    summary.add(
        "flexitasks", len(entries), len(entries) - len(late) - len(against) - views.get("probe", 0),
        f"{len(late)}" + (f" (last {1000 * (max(late) - first_open):.0f} ms after)" if late else ""),
        len(against), views.get("probe", 0), max(per_interval, default=0),
        " ".join(f"{t - t0:.1f}" for t in probe_times) or "-", " ".join(f"{g:.1f}" for g in gaps) or "-",
        f"{calls / (t1 - t0):.0f}", f"{next_probe:.1f}",
    )
    ok = max(per_interval, default=0) <= 1 and not against
    summary.notes += [
        f"Target: <= 1 probe per recovery interval, fleet-wide ({'met' if ok else 'NOT met'}).",
        "The calls workers sent to the dead provider after the first OPEN are classified by what the "
        "sender's own mirror showed at that moment: CLOSED (that process had not applied the OPEN yet), "
        "OPEN (should never happen), HALF_OPEN holding the token (the probe). opening burst = the rest of "
        "the fake's count: calls sent before the OPEN, including those in flight when the fault began.",
        "calls served = router calls completed by the workers (failed over to secondary while primary is "
        "skipped). next probe after return = when the provider, back at the end of the outage, is tried "
        "again.",
    ]
    return [summary, detail]
