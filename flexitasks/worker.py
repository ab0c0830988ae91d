"""Worker-side wiring: Celery signals and a bootstep, nothing else.

- main process: a bootstep starts the breaker sync (the main process runs remote
  control and must see transitions too) and reports it in ``inspect stats``;
- every prefork child (also each replacement): ``worker_process_init`` starts its own
  sync (nothing inherited is used: ``per_process.py``), waiting at most 1 s for the first snapshot
  (Celery kills a child whose init blocks for 4 s);
- each breaker transition this process makes becomes a Celery event
  (``breaker-opened`` ...), so Flower and event monitors see it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps, current_task
from celery.signals import celeryd_init, worker_init, worker_process_init, worker_process_shutdown

from flexitasks.breaker.store import BreakerState, StoreResult
from flexitasks.celery_app import app, settings
from flexitasks.sync import process

log = logging.getLogger(__name__)

EVENT_TYPES = {
    BreakerState.OPEN: "breaker-opened",
    BreakerState.FORCED_OPEN: "breaker-opened",
    BreakerState.HALF_OPEN: "breaker-half-opened",
    BreakerState.CLOSED: "breaker-closed",
    BreakerState.DISABLED: "breaker-disabled",
}


def event_fields(result: StoreResult) -> dict[str, Any]:
    snap = result.snapshot
    return {
        "provider": snap.provider,
        "state": snap.state.value,
        "previous": result.previous.value if result.previous else None,
        "generation": snap.generation,
        "reason": snap.reason,
        "open_until": snap.open_until,
    }


def send_transition_event(result: StoreResult) -> None:
    """Publish one Celery event for a transition this process made."""
    type_ = EVENT_TYPES[result.snapshot.state]
    fields = event_fields(result)
    if current_task and current_task.request.id is not None:  # a Proxy: falsy outside a task
        current_task.send_event(type_, **fields)
        return
    with app.events.default_dispatcher() as dispatcher:
        dispatcher.send(type_, **fields)


process.transition_listeners.append(send_transition_event)


@celeryd_init.connect
def _remember_node(sender: str | None = None, **_: Any) -> None:
    process.node_name = sender


@worker_init.connect
def _check_keys(**_: Any) -> None:
    if not settings.providers:
        log.error("flexitasks: no [[providers]] configured in %s; every chat task will fail", settings.source)
    for p in settings.providers:
        if p.api_key_env and p.api_key is None:
            log.error("flexitasks: provider %s: environment variable %s is not set; its calls will fail over",
                      p.name, p.api_key_env)
        elif p.api_key_env is None and p.kind != "openai-compatible":
            log.warning("flexitasks: provider %s has no api_key_env; it is called without a key", p.name)


@worker_process_init.connect
def _start_child_sync(**_: Any) -> None:
    process.role = "worker-child"
    if settings.breaker.enabled:
        process.current()


@worker_process_shutdown.connect
def _stop_child_sync(**_: Any) -> None:
    sync = process.existing()
    if sync is not None:
        sync.subscriber.stop()


class BreakerSync(bootsteps.StartStopStep):
    """Breaker sync for the worker's main process (it serves remote control)."""

    label = "flexitasks breaker sync"

    def start(self, worker: Any) -> None:
        if settings.breaker.enabled:
            process.role = "worker-main"
            process.current()

    def stop(self, worker: Any) -> None:
        sync = process.existing()
        if sync is not None:
            sync.subscriber.stop()

    def info(self, worker: Any) -> dict[str, Any]:
        sync = process.existing()
        if sync is None:
            return {"flexitasks": {"breakers": "disabled"}}
        return {"flexitasks": {"degraded": sync.gate.degraded, "view": sync.subscriber.view()}}


app.steps["worker"].add(BreakerSync)
