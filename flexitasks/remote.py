"""Celery remote control for breakers (runs in each worker's main process).

``celery -A flexitasks inspect breaker_status``
``celery -A flexitasks control breaker_trip <provider>`` / ``breaker_reset`` / ``breaker_disable``

Control commands go through the same atomic store path as every other transition,
so the event reaches every child through pub/sub; when several workers receive the
broadcast, the first one makes the transition and the others find nothing to change.
They use the sync the ``BreakerSync`` bootstep keeps on the worker and the settings of
the worker's app (``state.app.settings``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery.worker.control import control_command, inspect_command

from flexitasks.breaker.redis_store import BreakerStoreError
from flexitasks.breaker.store import BreakerState
from flexitasks.signals import announce

if TYPE_CHECKING:
    from flexitasks.sync.process import ProcessSync


def _sync(state: Any) -> ProcessSync | None:
    return getattr(state.consumer.controller, "breaker_sync", None)


def _force(state: Any, provider: str, target: BreakerState) -> dict[str, Any]:
    settings = state.app.settings
    names = [p.name for p in settings.providers]
    if provider not in names:
        return {"error": f"unknown provider {provider!r}; known: {', '.join(names)}"}
    sync = _sync(state)
    if sync is None:
        return {"error": "breakers are disabled on this worker ([breaker] enabled = false)"}
    policy = settings.breaker_policy(settings.provider(provider))
    try:
        result = sync.store.force(provider, policy, target)
    except BreakerStoreError as exc:
        return {"error": f"breaker store unreachable, nothing changed: {exc}"}
    sync.mirror.apply(result.snapshot)
    if result.transitioned:
        announce(result)
    snap = result.snapshot
    summary = f"{provider}: {snap.state.value} (generation {snap.generation})"
    if not result.transitioned:
        summary += ", unchanged"
    return {"ok": summary, "transitioned": result.transitioned, **snap.to_brief()}


@inspect_command(args=[], signature="")
def breaker_status(state: Any) -> dict[str, Any]:
    """Authoritative state of every provider's breaker, and this worker's applied view."""
    sync = _sync(state)
    if sync is None:
        return {"error": "breakers are disabled on this worker ([breaker] enabled = false)"}
    names = [p.name for p in state.app.settings.providers]
    try:
        authoritative = {name: snap.to_dict() for name, snap in sync.store.snapshot(names).items()}
    except BreakerStoreError as exc:
        authoritative = {"error": f"breaker store unreachable: {exc}"}
    return {"providers": authoritative, "view": sync.subscriber.view(), "degraded": sync.gate.degraded}


@control_command(args=[("provider", str)], signature="<provider>")
def breaker_trip(state: Any, provider: str) -> dict[str, Any]:
    """Force a provider's breaker open fleet-wide until ``breaker_reset``."""
    return _force(state, provider, BreakerState.FORCED_OPEN)


@control_command(args=[("provider", str)], signature="<provider>")
def breaker_reset(state: Any, provider: str) -> dict[str, Any]:
    """Close a provider's breaker fleet-wide and clear its failure window."""
    return _force(state, provider, BreakerState.CLOSED)


@control_command(args=[("provider", str)], signature="<provider>")
def breaker_disable(state: Any, provider: str) -> dict[str, Any]:
    """Never trip this provider's breaker (until ``breaker_reset``)."""
    return _force(state, provider, BreakerState.DISABLED)
