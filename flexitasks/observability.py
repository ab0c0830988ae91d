"""Worker-side operations wiring: logs, ``inspect stats`` and metrics flushing.

- each breaker transition this process makes (``breaker_transition``) is logged once at
  WARNING (``transition_log.py``);
- log lines of flexitasks' own loggers written during a task carry the task id
  (the router's lines already name the provider);
- ``inspect stats`` shows the authoritative breaker state read from Redis, beside the
  main process's applied view the breaker-sync bootstep reports (``FleetStats``, added to
  the worker by ``FlexitasksApp``);
- pending per-call counts are flushed when a child or the worker shuts down;
- a worker started with no config file says so loudly; the result repr limit is applied.

It changes no breaker state and reads settings only from the worker's app.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery._state import get_current_task
from celery.signals import after_setup_logger, worker_init, worker_process_shutdown

from flexitasks.breaker.store import BreakerState, StoreResult
from flexitasks.config import no_config_warning
from flexitasks.disclosure import TASK_NAME
from flexitasks.metrics import task_runs
from flexitasks.signals import breaker_transition
from flexitasks.transition_log import log_transition

log = logging.getLogger("flexitasks.worker")


@breaker_transition.connect
def _log_transition(sender: str, result: StoreResult, **_: Any) -> None:
    log_transition(result)


class TaskIdFilter(logging.Filter):
    """Prefix ``[task-id]`` to flexitasks' own records written inside a task."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("flexitasks") and not getattr(record, "flexitasks_task", None):
            task = get_current_task()
            task_id = task.request.id if task is not None else None
            if task_id:
                record.flexitasks_task = task_id
                record.msg = f"[{task_id}] {record.msg}"
        return True


@after_setup_logger.connect
def _tag_task_lines(logger: logging.Logger | None = None, **_: Any) -> None:
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, TaskIdFilter) for f in handler.filters):
            handler.addFilter(TaskIdFilter())


@worker_init.connect
def _worker_starts(sender: Any = None, **_: Any) -> None:
    warning = no_config_warning()
    if warning:
        log.warning("flexitasks: %s", warning)
    app = getattr(sender, "app", None)
    settings = getattr(app, "settings", None)
    if settings is not None and TASK_NAME in app.tasks:
        # Before the pool forks and before any tracer is built: both read it from the task.
        app.tasks[TASK_NAME].resultrepr_maxsize = settings.celery.result_repr_maxsize


@worker_process_shutdown.connect
def _flush_child_metrics(**_: Any) -> None:
    task_runs.flush()


def authoritative_breakers(sync: Any, providers: list[str]) -> dict[str, Any]:
    """Each provider's state in Redis, briefly (what ``inspect stats`` shows)."""
    if sync is None:
        return {"error": "breaker sync not running"}
    try:
        snaps = sync.store.snapshot(providers)
    except Exception as exc:  # the store names what failed; stats must still answer
        return {"error": f"breaker store unreachable: {exc}"}
    return {
        name: {"state": s.state.value, "generation": s.generation, "reason": s.reason,
               "failures": s.failures, "calls": s.calls,
               "probe_in": round(max(s.open_until - s.now, 0.0), 3) if s.state is BreakerState.OPEN else None}
        for name, s in snaps.items()
    }


class FleetStats(bootsteps.StartStopStep):
    """``inspect stats``: the authoritative breaker state; flushes metrics at shutdown."""

    label = "flexitasks fleet stats"
    requires = ("flexitasks.worker:BreakerSync",)

    def stop(self, w: Any) -> None:
        task_runs.flush()

    shutdown = stop

    def info(self, w: Any) -> dict[str, Any]:
        providers = [p.name for p in w.app.settings.providers]
        return {"flexitasks_breakers": authoritative_breakers(getattr(w, "breaker_sync", None), providers)}
