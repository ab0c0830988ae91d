"""Worker-side wiring: the breaker-sync bootstep, the child-init signals, Celery events.

- main process: the ``BreakerSync`` bootstep builds the process runtime (breaker sync
  included: the main process serves remote control, and runs the tasks under the
  threads and solo pools), keeps the sync on the worker as ``worker.breaker_sync`` and
  reports it in ``inspect stats``;
- every prefork child (also each replacement): ``worker_process_init`` builds its own
  runtime (nothing inherited is used: ``per_process.py``), waiting at most 1 s for the
  first snapshot (Celery kills a child whose init blocks for 4 s). Pools without
  children (threads, solo) fire no such signal: their tasks run in the main process,
  on the runtime the bootstep built (or the first task builds it, if it comes first);
- at start (``worker_init``): an error for each provider key that is missing, the
  socket-deadline self-test (``providers/deadlines.py``), the SDKs preloaded;
- every ``breaker_transition`` this process sends becomes a Celery event
  (``breaker-opened`` ...), so Flower and event monitors see it.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps, current_app, current_task
from celery.signals import worker_init, worker_process_init, worker_process_shutdown

from flexitasks.breaker.store import BreakerState, StoreResult
from flexitasks.celery_app import FlexitasksApp
from flexitasks.config import Settings
from flexitasks.providers import preload
from flexitasks.providers.deadlines import check_deadlines
from flexitasks.signals import breaker_transition

log = logging.getLogger(__name__)

EVENT_TYPES = {
    BreakerState.OPEN: "breaker-opened",
    BreakerState.FORCED_OPEN: "breaker-opened",
    BreakerState.HALF_OPEN: "breaker-half-opened",
    BreakerState.CLOSED: "breaker-closed",
    BreakerState.DISABLED: "breaker-disabled",
}


def event_fields(result: StoreResult) -> dict[str, Any]:
    """The transition event's fields (``BreakerSnapshot.to_event``), as Celery event fields."""
    event = result.snapshot.to_event(result.previous)
    return {k: v for k, v in event.items() if k not in ("v", "type")}


@breaker_transition.connect
def send_transition_event(sender: str, result: StoreResult, **_: Any) -> None:
    """Publish one Celery event for a transition this process made."""
    type_ = EVENT_TYPES[result.snapshot.state]
    fields = event_fields(result)
    if current_task and current_task.request.id is not None:  # a Proxy: falsy outside a task
        current_task.send_event(type_, **fields)
        return
    with current_app.events.default_dispatcher() as dispatcher:
        dispatcher.send(type_, **fields)


def _current_flexitasks_app() -> FlexitasksApp | None:
    current = current_app._get_current_object()
    return current if isinstance(current, FlexitasksApp) else None


@worker_process_init.connect
def _start_child_runtime(sender: str | None = None, **_: Any) -> None:
    flexi = _current_flexitasks_app()  # prefork makes the worker's app current before this signal
    if flexi is not None:
        flexi.runtime.start(role="worker-child", node=sender)


@worker_process_shutdown.connect
def _stop_child_runtime(**_: Any) -> None:
    flexi = _current_flexitasks_app()
    if flexi is not None:
        flexi.runtime.stop()


def check_keys(settings: Settings) -> None:
    """Say at start what will fail later: no providers, a key variable that is unset."""
    if not settings.providers:
        log.error("flexitasks: no [[providers]] configured in %s; every chat task will fail", settings.source)
    for p in settings.providers:
        if p.api_key_env and p.api_key is None:
            log.error("flexitasks: provider %s: environment variable %s is not set; its calls will fail over",
                      p.name, p.api_key_env)
        elif p.api_key_env is None and p.kind != "openai-compatible":
            log.warning("flexitasks: provider %s has no api_key_env; it is called without a key", p.name)


@worker_init.connect
def _startup_checks(sender: Any = None, **_: Any) -> None:
    """Once per worker, in its main process before the pool starts."""
    flexi = getattr(sender, "app", None)
    if isinstance(flexi, FlexitasksApp):
        check_keys(flexi.settings)
        check_deadlines()
        # The SDKs of the configured kinds, before the pool forks: children share their
        # pages, and none pays the import on its first call.
        preload(flexi.settings.providers)


class BreakerSync(bootsteps.StartStopStep):
    """This worker's breaker sync in its main process (after the pool has forked its children)."""

    label = "flexitasks breaker sync"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, w: Any, **kwargs: Any) -> None:
        self.app: FlexitasksApp = w.app
        w.breaker_sync = None
        super().__init__(w, **kwargs)

    def start(self, w: Any) -> None:
        w.breaker_sync = self.app.runtime.start(role="worker-main", node=w.hostname).sync

    def stop(self, w: Any) -> None:
        self.app.runtime.stop()
        w.breaker_sync = None

    shutdown = stop

    def info(self, w: Any) -> dict[str, Any]:
        sync = w.breaker_sync
        if sync is None:
            return {"flexitasks": {"breakers": "disabled"}}
        return {"flexitasks": {"degraded": sync.gate.degraded, "view": sync.subscriber.view()}}

