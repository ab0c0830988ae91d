"""The per-process objects that serve calls: adapters, breaker gate, router.

Built lazily, once per process (and again after a fork), so the prefork main
process never hands its HTTP pools or Redis connections to a child.
"""

from __future__ import annotations

from dataclasses import dataclass

from flexitasks.breaker.permit import BreakerGate, OpenGate
from flexitasks.celery_app import settings
from flexitasks.failover.policy import default_policy
from flexitasks.failover.router import Router
from flexitasks.per_process import PerProcess
from flexitasks.providers import build_adapter


@dataclass
class Runtime:
    router: Router
    gate: BreakerGate


def _make_gate() -> BreakerGate:
    if not settings.breaker.enabled:
        return OpenGate()
    from flexitasks.sync.process import process_gate

    return process_gate()


def _build() -> Runtime:
    gate = _make_gate()
    router = Router(
        providers=settings.providers,
        adapters={p.name: build_adapter(p) for p in settings.providers},
        gate=gate,
        policy=default_policy(settings.retry),
        request_timeout=settings.retry.request_timeout,
    )
    return Runtime(router=router, gate=gate)


runtime = PerProcess(_build).get
