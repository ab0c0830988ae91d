"""Limits: the rate a provider sees against its fleet-wide limit, and what a check costs.

Three measurements (issue 12):

* **rpm**: 16 forked processes, each a real ``Router`` with a ``Limiter`` over Redis, call
  ``primary`` (rpm-limited; over the limit the router skips it and ``secondary`` answers)
  in a paced loop offering several times the limit. The rate is counted at the fake
  provider, from its request log, over the whole run; the bucket is primed (drained) at the
  start so the burst does not count.
* **tpm**: the same with a tokens-per-minute limit: each call reserves its estimate
  (input size + ``max_tokens``) and settles with the real usage after it. Reported: the
  tokens the provider served per minute against ``tpm``, i.e. the error after settlement.
* **round trips**: Redis commands per call by the limiter alone (breakers off), counted
  with ``INFO commandstats`` on a private ``redis-server`` when one can be started.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any

import redis

from benchmarks import KEY_PREFIX, PRIMARY, SECONDARY
from benchmarks.common import Fakes, Table, chat_request, log, pool, redis_client, settings

PROCESSES = 16
PACE = 0.2  # seconds between one process's calls: 16 processes offer ~70 calls/s
RPM = 600.0  # 10/s
TPM = 1800  # 30 tokens/s; a call here uses 3 tokens and reserves ~21


def _providers(limits: dict[str, Any]) -> list[Any]:
    return [p.model_copy(update=limits) if p.name == PRIMARY else p for p in settings.providers]


def _router(limits: dict[str, Any], prefix: str, client: redis.Redis) -> Any:
    from flexitasks.breaker.permit import OpenGate
    from flexitasks.failover.policy import default_policy
    from flexitasks.failover.router import Router
    from flexitasks.limits import RedisLimiterBackend, policy_of
    from flexitasks.limits.limiter import Limiter
    from flexitasks.providers import build_adapter

    providers = _providers(limits)
    limiter = Limiter({p.name: policy_of(p) for p in providers}, RedisLimiterBackend(client, prefix))
    return Router(providers, {p.name: build_adapter(p) for p in providers}, OpenGate(),
                  default_policy(settings.retry), request_timeout=settings.retry.request_timeout, limiter=limiter)


def _caller(index: int, conn: Connection, limits: dict[str, Any], prefix: str) -> None:
    router = _router(limits, prefix, redis_client())
    request = chat_request(PRIMARY, SECONDARY)
    router.run(chat_request(SECONDARY))  # connections open, the limiter's script loaded: no cold start in the run
    conn.send(("ready", index))
    _, end = conn.recv()
    served: list[tuple[float, int]] = []  # (wall time, tokens) of each answer from primary
    while time.time() < end:
        result = router.run(request)
        if result.provider == PRIMARY:
            served.append((time.time(), result.usage.total_tokens))
        time.sleep(PACE)
    conn.send(("done", served))
    conn.recv()


def _prime(limits: dict[str, Any], prefix: str) -> None:
    """Drain the primary's bucket, so the run measures the steady rate, not the burst."""
    from flexitasks.limits import RedisLimiterBackend, policy_of

    policy = policy_of(_providers(limits)[[p.name for p in settings.providers].index(PRIMARY)])
    backend = RedisLimiterBackend(redis_client(), prefix)
    while backend.check(PRIMARY, policy, policy.tpm or 0, "prime").allowed:
        pass


def _rate_run(fakes: Fakes, limits: dict[str, Any], seconds: float) -> tuple[list[float], list[tuple[float, int]]]:
    prefix = f"{KEY_PREFIX}:bench-{int(time.time() * 1000)}"
    fakes.reset()
    with pool(PROCESSES, _caller, limits, prefix) as p:
        p.gather("ready")
        _prime(limits, prefix)
        start = time.time()
        p.send_all(("go", start + seconds))
        served = [x for got in p.gather("done", timeout=seconds + 60) for x in got]
    calls = [e["t"] for e in fakes.admin[PRIMARY].requests() if start <= e["t"] < start + seconds]
    return calls, [x for x in served if start <= x[0] < start + seconds]


def _round_trips(client: redis.Redis, n: int) -> list[tuple[str, float, float]]:
    """(limits, EVALSHA per call, commands run inside Redis per call)."""
    cases = {
        "none": {},
        "rpm": {"rpm": 1e6},
        "rpm + tpm": {"rpm": 1e6, "tpm": 10**9},
        "max_in_flight": {"max_in_flight": 1000},
        "rpm + tpm + max_in_flight": {"rpm": 1e6, "tpm": 10**9, "max_in_flight": 1000},
    }
    out = []
    request = chat_request(PRIMARY)
    for label, limits in cases.items():
        router = _router(limits, f"{KEY_PREFIX}:cost", client)
        router.run(request)  # loads the script, opens the connections
        before = client.info("commandstats")
        for _ in range(n):
            router.run(request)
        after = client.info("commandstats")
        calls = {k: int(after[k]["calls"]) - int(before.get(k, {"calls": 0})["calls"]) for k in after}
        evalsha = calls.get("cmdstat_evalsha", 0) + calls.get("cmdstat_eval", 0)
        inside = sum(v for k, v in calls.items() if k not in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_info"))
        out.append((label, evalsha / n, inside / n))
    return out


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    from benchmarks.cost import _private_redis

    seconds = 20.0 if quick else 60.0
    tables = []
    log(f"limits: rpm {RPM:g} over {seconds:g} s, {PROCESSES} processes")
    calls, _ = _rate_run(fakes, {"rpm": RPM}, seconds)
    rate = len(calls) / seconds * 60
    t = Table(f"rpm: what the provider sees ({PROCESSES} processes, {seconds:g} s, bucket drained first)",
              ["limit (rpm)", "burst", f"calls in the {seconds:g} s", "rate seen (rpm)", "error"])
    t.add(f"{RPM:g}", f"{RPM / 60:g}", len(calls), f"{rate:.1f}", f"{(rate / RPM - 1) * 100:+.2f} %")
    t.notes.append("Counted at the fake provider from its request log (arrival times within the run's window). "
                   "Over the limit the router skips the provider ('rate limit: rpm') and the next one answers; "
                   "16 processes offer ~6x the limit; calls admitted near the window's ends and arriving on the "
                   "other side of them make the error.")
    tables.append(t)

    log(f"limits: tpm {TPM} over {seconds:g} s")
    _, served = _rate_run(fakes, {"tpm": TPM}, seconds)
    tokens = sum(n for _, n in served)
    per_minute = tokens / seconds * 60
    t = Table(f"tpm: tokens served against the limit after settlement ({PROCESSES} processes, {seconds:g} s)",
              ["limit (tpm)", "calls", "tokens reserved per call", "tokens used per call", "tokens per minute seen",
               "error"])
    estimate = 16 + 4 + 1  # max_tokens + message framing + "ping"
    t.add(TPM, len(served), estimate, f"{tokens / max(len(served), 1):.1f}", f"{per_minute:.0f}",
          f"{(per_minute / TPM - 1) * 100:+.2f} %")
    t.notes.append("Each call reserves its estimate (7x its real use here) and settles with the usage the provider "
                   "reports; without settlement the provider would see a seventh of its limit.")
    tables.append(t)

    private = _private_redis()
    client = redis.Redis.from_url(private[1]) if private else redis_client()
    try:
        rows = _round_trips(client, 100 if quick else 300)
    finally:
        client.close()
        if private:
            private[0].terminate()
            private[0].wait(10)
    t = Table("Redis cost of a call by its provider's limits (breakers off)",
              ["limits", "round trips (EVALSHA) per call", "commands inside Redis per call"])
    for label, trips, inside in rows:
        t.add(label, f"{trips:.2f}", f"{inside:.2f}")
    t.notes.append("rpm alone needs no report after the call (1 round trip); tpm settlement and the in-flight "
                   "lease release are a second. A provider without limits costs none. A come-back that books a "
                   "slot adds one." + ("" if private else " Counted on the shared Redis: other traffic may add noise."))
    tables.append(t)
    return tables
