"""The task layer's one call into metrics: ``record_run`` after each run of ``flexitasks.chat``.

Holds this process's ``MetricsRecorder`` per app (built on first use, again after a
fork) with the price table of the app's settings, and turns a run's end (a result, or
an exception carrying ``attempts``) into counts. Never raises: metrics must not fail a
request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flexitasks.config import Settings
from flexitasks.metrics.counters import MetricsRecorder
from flexitasks.metrics.derive import Price, observe_run
from flexitasks.per_process import PerProcess

log = logging.getLogger(__name__)

Built = tuple[MetricsRecorder, dict[str, Price]]
_holders: dict[int, PerProcess[Built]] = {}


def build(settings: Settings) -> Built:
    from flexitasks.redis_connect import sync_client

    s = settings.sync
    prices = {p.name: Price(p.price.input_per_million, p.price.output_per_million)
              for p in settings.providers if p.price is not None}
    return MetricsRecorder(sync_client(s), s.key_prefix), prices  # single Redis, Sentinel or Cluster


def _for(app: Any) -> Built:
    holder = _holders.get(id(app))
    if holder is None:
        holder = _holders.setdefault(id(app), PerProcess(lambda: build(app.settings)))
    return holder.get()


def _plain(attempts: Sequence[Any]) -> list[Mapping[str, Any]]:
    return [a.model_dump() if hasattr(a, "model_dump") else dict(a) for a in attempts]


def record_run(app: Any, outcome: str, attempts: Sequence[Any] = (), provider: str | None = None,
               usage: Any = None) -> float | None:
    """Count one run of ``app``'s chat task; returns its cost in USD when the answering
    provider has a price."""
    try:
        recorder, prices = _for(app)
        plain_usage = usage.model_dump() if hasattr(usage, "model_dump") else usage
        obs, cost = observe_run(outcome, _plain(attempts), provider=provider, usage=plain_usage, prices=prices)
        recorder.record(obs)
        return round(cost, 8) if cost is not None else None
    except Exception:  # a bug here must never fail the request
        log.exception("recording metrics of a run failed")
        return None


def flush() -> None:
    """Write this process's pending counts now (worker and child shutdown)."""
    for holder in list(_holders.values()):
        built = holder.existing()
        if built is not None:
            built[0].close()
