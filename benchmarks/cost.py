"""Cost: Redis commands per call, counted with ``INFO commandstats`` deltas.

``INFO commandstats`` is server-wide, so the count runs against a private
``redis-server`` this module starts on a free port (nothing persisted), in a child
process (``python -m benchmarks.cost --child OUT``) whose flexitasks points at it
through ``FLEXITASKS_REDIS_URL``; without a ``redis-server`` binary it falls back to
the shared Redis and says so. The child builds its sync and router exactly as a
prefork child does and measures, over the same duration each: an idle baseline (the
sync thread's heartbeats and periodic resync, no calls), then calls on each path. Per
call = (commands during the phase - idle baseline) / calls. Commands run inside the
Lua script (HGETALL, HINCRBY, PUBLISH...) count, as commandstats counts them; "round
trips" are the commands a client sent. pybreaker with Redis storage is measured the
same way, in the same child.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

import redis

from benchmarks import LOG_FILE, PRIMARY, REDIS_URL, anchors
from benchmarks.common import LOG_FORMAT, Fakes, Table, log, num, settings
from flexitasks.harness import free_port
from flexitasks.script_clock import script_source

ROOT = Path(__file__).resolve().parent.parent
NOT_COUNTED = {"info"}  # our own measuring


def _in_script() -> set[str]:
    """Commands flexitasks' Lua script runs inside Redis (read from its source); in the
    flexitasks rows every other command is a client round trip."""
    source = script_source("flexitasks.breaker", "transition.lua")  # with the prelude: its TIME too
    return {m.lower() for m in re.findall(r"redis\.p?call\(\s*['\"](\w+)['\"]", source)}


# ---------------------------------------------------------------------------- child side


def _counts(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    return {k: v for k, v in out.items() if v and k not in NOT_COUNTED}


def _phase(stats: redis.Redis, seconds: float, step: Any) -> dict[str, Any]:
    """Run ``step()`` (None: stay idle) for ``seconds``; commands seen and steps made."""
    before = _counts(stats)
    start = time.monotonic()
    ops = 0
    while time.monotonic() - start < seconds:
        if step is None:
            time.sleep(0.05)
        else:
            step()
            ops += 1
    elapsed = time.monotonic() - start
    return {"ops": ops, "seconds": elapsed, "delta": _delta(before, _counts(stats))}


def _child(out: Path, seconds: float, idle: float) -> None:
    from benchmarks.common import chat_request, worker_runtime
    from flexitasks.breaker.store import BreakerState
    from flexitasks.errors import FlexitasksError
    from flexitasks.fake_provider import FakeProviderAdmin
    from flexitasks.providers import build_adapter

    url = settings.sync.redis_url
    runtime = worker_runtime()
    sync, router = runtime.sync, runtime.router
    request = chat_request(PRIMARY)
    admin = FakeProviderAdmin(settings.provider(PRIMARY).base_url.removesuffix("/v1"))
    stats = redis.Redis.from_url(url)
    policy = sync.gate.policies[PRIMARY]
    results: dict[str, Any] = {"redis_url": url}

    def call() -> None:
        with suppress(FlexitasksError):
            router.run(request)

    admin.clear()
    sync.store.force(PRIMARY, policy, BreakerState.CLOSED)
    for _ in range(20):
        call()
    time.sleep(0.2)
    results["idle"] = _phase(stats, idle, None)  # long enough to hold resyncs, not just heartbeats
    results["flexitasks: success, CLOSED and healthy"] = _phase(stats, seconds, call)

    # Failures that do not trip (threshold out of reach): what one reported failure costs.
    sync.gate.policies[PRIMARY] = dataclasses.replace(policy, failure_threshold=10**9)
    admin.set_fault(status=500)
    results["flexitasks: failure (counted, CLOSED)"] = _phase(stats, seconds, call)
    admin.clear()
    time.sleep(0.1)
    results["flexitasks: success while the window holds failures"] = _phase(stats, seconds, call)

    # OPEN: calls skipped by the mirror.
    sync.gate.policies[PRIMARY] = policy
    sync.store.force(PRIMARY, policy, BreakerState.CLOSED)
    admin.set_fault(status=500)
    deadline = time.monotonic() + 10
    while sync.mirror.get(PRIMARY).snapshot.state is not BreakerState.OPEN and time.monotonic() < deadline:
        call()
    time.sleep(0.1)
    results["flexitasks: skipped while OPEN"] = _phase(stats, min(seconds, 4.0), call)
    admin.clear()
    sync.store.force(PRIMARY, policy, BreakerState.CLOSED)

    # pybreaker with Redis storage, same client library, same server.
    client = redis.Redis.from_url(url)
    adapter = build_adapter(settings.provider(PRIMARY))
    anchors.reset_shared(client)
    cb = anchors.make_breaker(anchors.REDIS, client)
    results[f"{anchors.REDIS}: success, CLOSED and healthy"] = _phase(
        stats, seconds, lambda: anchors.call(cb, adapter.complete, request))
    cb = anchors.make_breaker(anchors.REDIS, client, fail_max=10**9)
    admin.set_fault(status=500)
    results[f"{anchors.REDIS}: failure (counted, CLOSED)"] = _phase(
        stats, seconds, lambda: anchors.call(cb, adapter.complete, request))
    anchors.reset_shared(client)
    cb = anchors.make_breaker(anchors.REDIS, client)
    while cb.current_state != "open":
        anchors.call(cb, adapter.complete, request)
    results[f"{anchors.REDIS}: refused while OPEN"] = _phase(
        stats, min(seconds, 4.0), lambda: anchors.call(cb, adapter.complete, request))
    admin.clear()
    anchors.reset_shared(client)
    sync.subscriber.stop()
    out.write_text(json.dumps(results))


# ---------------------------------------------------------------------------- coordinator side


def _private_redis() -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                return None
            time.sleep(0.05)
    client.close()
    return proc, f"redis://127.0.0.1:{port}/5"


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    seconds = 1.0 if quick else 4.0
    idle = max(seconds, settings.sync.resync_interval * (1 if quick else 2))
    private = _private_redis()
    url = private[1] if private else REDIS_URL
    out = Path(tempfile.mkdtemp(prefix="flexitasks-cost-")) / "cost.json"
    env = {**os.environ, "FLEXITASKS_REDIS_URL": url}
    log(f"cost: INFO commandstats on {'a private redis-server' if private else 'the shared Redis'} ({url})")
    try:
        subprocess.run(
            [sys.executable, "-m", "benchmarks.cost", "--child", str(out), "--seconds", str(seconds),
             "--idle", str(idle)],
            env=env, cwd=ROOT, check=True, timeout=180,
        )
    finally:
        if private:
            private[0].terminate()
            private[0].wait(10)
    fakes.admin[PRIMARY].clear()
    return [_table(json.loads(out.read_text()), private is not None, seconds)]


def _table(results: dict[str, Any], private: bool, seconds: float) -> Table:
    idle = results["idle"]
    in_script = _in_script()
    table = Table(
        "Cost: Redis commands per call (INFO commandstats, idle baseline subtracted)",
        ["path", "calls", "commands", "idle baseline", "per call", "round trips per call",
         "per call, by command"],
    )
    for name, phase in results.items():
        if name in ("idle", "redis_url"):
            continue
        scale = phase["seconds"] / idle["seconds"]
        base = {k: v * scale for k, v in idle["delta"].items()}
        total = sum(phase["delta"].values())
        base_total = sum(base.values())
        ops = max(phase["ops"], 1)
        # The baseline is an estimate: a phase may hold one resync or heartbeat less; never below 0.
        per = {k: max(0.0, (phase["delta"].get(k, 0) - base.get(k, 0)) / ops)
               for k in set(phase["delta"]) | set(base)}
        trips = sum(v for k, v in per.items() if not (name.startswith("flexitasks") and k in in_script))
        shown = ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.02)
        table.add(name, phase["ops"], total, f"{base_total:.1f}", num(max(0.0, total - base_total) / ops, 2),
                  num(trips, 2), shown or "-")
    idle_desc = ", ".join(f"{k} {v}" for k, v in sorted(idle["delta"].items())) or "none"
    success = next(r for r in table.rows if r[0].startswith("flexitasks: success, CLOSED"))
    table.notes += [
        f"Target: 0 commands per call on the success path while CLOSED and healthy (measured {success[4]}).",
        f"Idle baseline over {idle['seconds']:.1f} s (one process's sync thread: heartbeats, resync): "
        f"{idle_desc}; scaled to each phase's duration ({seconds:g} s) and subtracted.",
        "per call counts commands run inside the Lua script too (commandstats counts them); round trips = "
        "commands a client sent (EVALSHA, GET, SET, INCR...).",
    ]
    if not private:
        table.notes.append("No redis-server binary: counted on the shared Redis, so other clients' traffic "
                           "is included; treat as an upper bound.")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cost")
    parser.add_argument("--child", type=Path, required=True, help="write the measurements here (JSON)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measured phase")
    parser.add_argument("--idle", type=float, default=10.0, help="length of the idle baseline")
    args = parser.parse_args(argv)
    logging.basicConfig(filename=LOG_FILE, level=logging.WARNING, format=LOG_FORMAT)
    _child(args.child, args.seconds, args.idle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
