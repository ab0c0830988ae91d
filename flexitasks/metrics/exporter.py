"""``flexitasks metrics``: a Prometheus exporter of the fleet, read from Redis at scrape time.

A custom collector rather than counters in this process: the authoritative breaker
state, every live process's applied view and the per-call totals every process flushes
(``counters.py``) are all in Redis, so one exporter anywhere sees the whole fleet and
prefork children need no multiprocess metric files. Redis down is an answer, not an
error: ``flexitasks_redis_up 0`` and nothing else, and the exporter starts without it.
Read-only: it never changes breaker state.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from flexitasks.breaker.redis_store import BreakerStoreError
from flexitasks.breaker.store import BreakerState
from flexitasks.fleet import FleetReader
from flexitasks.metrics.counters import read_totals
from flexitasks.metrics.derive import HISTOGRAM_BUCKETS

log = logging.getLogger(__name__)

COUNTERS: dict[str, tuple[str, list[str]]] = {
    "provider_calls_total": ("provider calls by outcome (ok|error|skipped) and error class",
                             ["provider", "outcome", "kind"]),
    "requests_total": ("task runs by outcome (ok|retried|failed|rejected|invalid)", ["outcome"]),
    "failovers_total": ("moves from one provider to the next within a run", ["from_provider", "to_provider"]),
    "tokens_total": ("tokens of answered calls", ["provider", "direction"]),
    "cost_usd_total": ("cost of answered calls from the configured price table, USD", ["provider"]),
}
HISTOGRAMS = {
    "call_duration_seconds": "duration of one provider call (errors included)",
    "time_to_first_token_seconds": "from a call's start to its first token",
}


class FleetCollector(Collector):
    def __init__(self, reader: FleetReader) -> None:
        self.reader = reader

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("flexitasks_redis_up", "1 if the exporter could read Redis at this scrape")
        try:
            status = self.reader.status()
            totals = read_totals(self.reader.client, self.reader.key_prefix)
        except (redis.RedisError, BreakerStoreError, OSError) as exc:
            log.warning("metrics scrape: Redis unreachable (%s)", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from breaker_metrics(status)
        yield from call_metrics(totals)


def breaker_metrics(status: dict[str, Any]) -> Iterator[Metric]:
    providers: dict[str, dict[str, Any]] = status["providers"]
    processes: list[dict[str, Any]] = status["processes"]
    state = GaugeMetricFamily(
        "flexitasks_breaker_state", "1 for the breaker's current state (authoritative, in Redis)",
        labels=["provider", "state"],
    )
    generation = GaugeMetricFamily("flexitasks_breaker_generation", "transitions so far", labels=["provider"])
    failures = GaugeMetricFamily(
        "flexitasks_breaker_window_failures", "provider failures in the rolling window", labels=["provider"]
    )
    calls = GaugeMetricFamily("flexitasks_breaker_window_calls", "calls counted in the rolling window",
                              labels=["provider"])
    reopens = GaugeMetricFamily("flexitasks_breaker_reopen_count", "consecutive failed probes", labels=["provider"])
    probe_in = GaugeMetricFamily("flexitasks_breaker_probe_in_seconds",
                                 "seconds until an open breaker may probe (0 when not open)", labels=["provider"])
    lagging = GaugeMetricFamily(
        "flexitasks_breaker_lagging_processes",
        "live processes whose applied generation differs from the authoritative one",
        labels=["provider"],
    )
    for name, snap in providers.items():
        for s in BreakerState:
            state.add_metric([name, s.value], 1.0 if snap["state"] == s.value else 0.0)
        generation.add_metric([name], snap["generation"])
        failures.add_metric([name], snap["failures"])
        calls.add_metric([name], snap["calls"])
        reopens.add_metric([name], snap["reopen_count"])
        probe_in.add_metric([name], snap.get("probe_in") or 0.0)
        behind = sum(
            1 for p in processes if p.get("breakers", {}).get(name, {}).get("generation") != snap["generation"]
        )
        lagging.add_metric([name], behind)
    yield from (state, generation, failures, calls, reopens, probe_in, lagging)

    live = GaugeMetricFamily("flexitasks_processes", "live processes with a breaker view", labels=["role"])
    for role, count in sorted(Counter(p.get("role", "?") for p in processes).items()):
        live.add_metric([role], count)
    yield live
    invalid = GaugeMetricFamily("flexitasks_invalid_events", "invalid breaker events seen by live processes (sum)")
    invalid.add_metric([], sum(int(p.get("invalid_events", 0)) for p in processes))
    yield invalid
    yield from limit_metrics(status.get("limits", {}))


def limit_metrics(limits: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    """Fleet-wide limits (``flexitasks.limits.status``): use against capacity, and skips."""
    used = GaugeMetricFamily(
        "flexitasks_limit_used",
        "in use now: rpm requests in its bucket, tpm tokens reserved or spent this minute, in_flight calls",
        labels=["provider", "limit"],
    )
    capacity = GaugeMetricFamily(
        "flexitasks_limit_capacity",
        "most a limit holds at once: rpm's burst, tpm's tokens per minute, max_in_flight",
        labels=["provider", "limit"],
    )
    skips = CounterMetricFamily(
        "flexitasks_limit_skips", "attempts skipped because the provider was at this limit",
        labels=["provider", "limit"],
    )
    for name, entry in limits.items():
        for limit, value in entry.items():
            if limit == "skips":
                continue
            used.add_metric([name, limit], value["used"])
            capacity.add_metric([name, limit], value["capacity"])
            skips.add_metric([name, limit], entry.get("skips", {}).get(limit, 0))
    yield from (used, capacity, skips)


def call_metrics(totals: dict[tuple[str, ...], float]) -> Iterator[Metric]:
    """The per-call counters and histograms every process flushed to Redis."""
    families = {name: CounterMetricFamily(f"flexitasks_{name.removesuffix('_total')}", text, labels=labels)
                for name, (text, labels) in COUNTERS.items()}
    buckets: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    sums: dict[tuple[str, str], float] = {}
    for key, value in sorted(totals.items()):
        name, labels = key[0], list(key[1:])
        family = families.get(name)
        if family is not None and len(labels) == len(COUNTERS[name][1]):
            family.add_metric(labels, value)
        elif name.endswith("_bucket") and len(labels) == 2:
            buckets[(name.removesuffix("_bucket"), labels[0])][labels[1]] = value
        elif name.endswith("_sum") and len(labels) == 1:
            sums[(name.removesuffix("_sum"), labels[0])] = value
    yield from families.values()
    for histogram, text in HISTOGRAMS.items():
        family = HistogramMetricFamily(f"flexitasks_{histogram}", text, labels=["provider"])
        for (name, provider), counts in sorted(buckets.items()):
            if name != histogram:
                continue
            running, cumulative = 0.0, []
            for bound in [*(repr(float(b)) for b in HISTOGRAM_BUCKETS[histogram]), "+Inf"]:
                running += counts.get(bound, 0.0)
                cumulative.append((bound, running))
            family.add_metric([provider], cumulative, sum_value=sums.get((name, provider), 0.0))
        yield family


def serve(reader: FleetReader, port: int, addr: str = "127.0.0.1") -> None:
    """Expose ``/metrics`` until interrupted; starts (and keeps answering) without Redis."""
    import time

    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(FleetCollector(reader))
    start_http_server(port, addr=addr, registry=registry)
    print(f"flexitasks metrics on http://{addr}:{port}/metrics", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def render(reader: FleetReader) -> str:
    """The exposition text once (``flexitasks metrics --once``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(FleetCollector(reader))
    return generate_latest(registry).decode()
