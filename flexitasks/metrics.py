"""Prometheus metrics of the fleet's breakers, read from Redis at scrape time.

A custom collector rather than counters in each process: the authoritative state and
every live process's applied view are already in Redis, so one exporter anywhere
(``flexitasks metrics --port 9808``) sees the whole fleet, and prefork children need no
multiprocess metric files. Read-only: it never changes breaker state.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from flexitasks.breaker.store import BreakerState

StatusSource = Callable[[], dict[str, Any]]


class FleetCollector(Collector):
    def __init__(self, status: StatusSource) -> None:
        self._status = status

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        status = self._status()
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
        calls = GaugeMetricFamily(
            "flexitasks_breaker_window_calls", "calls counted in the rolling window", labels=["provider"]
        )
        reopens = GaugeMetricFamily(
            "flexitasks_breaker_reopen_count", "consecutive failed probes", labels=["provider"]
        )
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
            behind = sum(
                1 for p in processes
                if p.get("breakers", {}).get(name, {}).get("generation") != snap["generation"]
            )
            lagging.add_metric([name], behind)
        yield from (state, generation, failures, calls, reopens, lagging)

        live = GaugeMetricFamily("flexitasks_processes", "live processes with a breaker view", labels=["role"])
        for role, count in sorted(Counter(p.get("role", "?") for p in processes).items()):
            live.add_metric([role], count)
        yield live
        invalid = GaugeMetricFamily(
            "flexitasks_invalid_events", "invalid breaker events seen by live processes (sum)"
        )
        invalid.add_metric([], sum(int(p.get("invalid_events", 0)) for p in processes))
        yield invalid
        yield from _limit_metrics(status.get("limits", {}))


def _limit_metrics(limits: dict[str, dict[str, Any]]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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


def serve(port: int, status: StatusSource, addr: str = "0.0.0.0") -> None:
    """Expose ``/metrics`` until interrupted."""
    import time

    from prometheus_client import REGISTRY, start_http_server

    REGISTRY.register(FleetCollector(status))
    start_http_server(port, addr=addr)
    print(f"flexitasks metrics on http://{addr}:{port}/metrics", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def render(status: StatusSource) -> str:
    """The exposition text once (``flexitasks metrics --once``)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry()
    registry.register(FleetCollector(status))
    return generate_latest(registry).decode()
