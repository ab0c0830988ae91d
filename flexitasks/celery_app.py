"""The Celery app: flexitasks' ``Settings`` as the composition root, mapped onto Celery's.

Owns building the app and resolving its settings; the task lives in ``tasks.py``,
worker-side hooks in ``worker.py``, remote control in ``remote.py``. Importing this
module reads no file: Celery asks for its configuration (``app.add_defaults`` with a
promise) the first time ``app.conf`` is needed, and only then are the settings loaded.

How to get Settings (no module holds a global one):

- the default app: ``flexitasks.app.settings``, read on first use from ``FLEXITASKS_CONFIG``
  (else ``./flexitasks.toml``) plus the environment overrides; on the ``celery`` and
  ``flexitasks`` command lines a bad file exits with code 2 and one line;
- settings built in code (tests, embedding): ``FlexitasksApp(settings)`` for an app of its
  own, or ``flexitasks.app.use_settings(settings)`` before the default app is first used;
- in a task: ``self.app.settings``; in a bootstep: ``worker.app.settings``; in remote
  control: ``state.app.settings``;
- everything below (router, gate, sync, adapters) receives what it needs as constructor
  arguments from ``runtime.py``; never read settings at import.
"""

from __future__ import annotations

import os
import sys
from functools import cached_property
from typing import TYPE_CHECKING, Any

from celery import Celery

from flexitasks.config import Settings, load_settings
from flexitasks.delivery import visibility_timeout
from flexitasks.errors import ConfigError

if TYPE_CHECKING:
    from flexitasks.runtime import ProcessRuntime

TASK_MODULES = ("flexitasks.tasks", "flexitasks.remote", "flexitasks.worker", "flexitasks.observability")


def _is_command_line() -> bool:
    """Are we the ``celery`` or ``flexitasks`` command (where a traceback helps nobody)?"""
    argv0 = sys.argv[0] if sys.argv else ""
    return os.path.basename(argv0) in ("celery", "flexitasks") or argv0.endswith(
        os.path.join("celery", "__main__.py")
    )


def settings_from_environment() -> Settings:
    """The config file and environment overrides; on a command line a bad file is one
    message on stderr and exit code 2."""
    try:
        return load_settings()
    except ConfigError as exc:
        if _is_command_line():
            sys.stderr.write(f"flexitasks: {exc}\n")
            raise SystemExit(2) from None
        raise


def celery_config(s: Settings) -> dict[str, object]:
    """Celery's settings: flexitasks' own, then ``[celery.options]`` (a table merged into ours)."""
    conf = _own_config(s)
    for key, value in s.celery.options.items():
        ours = conf.get(key)
        conf[key] = {**ours, **value} if isinstance(ours, dict) and isinstance(value, dict) else value
    return conf


def _own_config(s: Settings) -> dict[str, Any]:
    return {
        "broker_url": s.celery.broker_url,
        # A queue of our own: a worker consumes only it, so another app's tasks on the same
        # broker are neither eaten nor dropped as unregistered.
        "task_default_queue": s.celery.queue,
        "result_backend": s.celery.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # A killed worker loses no request: the message is acked only after the task ends.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # LLM calls are slow; a child should not hoard messages others could run.
        "worker_prefetch_multiplier": s.celery.prefetch_multiplier,
        # Redis broker: an unacked message (a killed worker's) comes back after this, not an
        # hour later; never while it may still be held or run (``delivery.visibility_timeout``).
        "broker_transport_options": {"visibility_timeout": visibility_timeout(s), **_sentinel(s.celery.broker_url, s)},
        **_result_transport(s),
        "result_expires": s.celery.result_expires,
        "worker_send_task_events": s.celery.task_events,
        "task_send_sent_event": s.celery.task_events,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_time_limit": int(s.retry.request_timeout + 30),
        "task_soft_time_limit": int(s.retry.request_timeout + 15),
    }


def _sentinel(url: str, s: Settings) -> dict[str, Any]:
    """Celery's own Sentinel support: kombu/the result backend find the master named here."""
    return {"master_name": s.celery.master_name} if url.startswith("sentinel://") and s.celery.master_name else {}


def _result_transport(s: Settings) -> dict[str, Any]:
    """A Sentinel result backend: its master, and a result write retried through a failover
    (Celery gives up at once by default, losing the answer of a task that ran)."""
    options = _sentinel(s.celery.result_backend, s)
    if not options:
        return {}
    return {"result_backend_transport_options": options, "result_backend_always_retry": True,
            "result_backend_max_retries": 30, "result_backend_base_sleep_between_retries_ms": 100}


class FlexitasksApp(Celery):
    """A Celery app that knows its flexitasks ``Settings`` (given, or read on first use)."""

    def __init__(self, settings: Settings | None = None, main: str = "flexitasks", **kwargs: Any) -> None:
        kwargs.setdefault("include", TASK_MODULES)
        super().__init__(main, **kwargs)
        self._settings = settings
        self.steps["worker"].add("flexitasks.worker:BreakerSync")
        self.steps["worker"].add("flexitasks.observability:FleetStats")
        # A promise: Celery calls it when the configuration is first needed, not now.
        self.add_defaults(lambda: celery_config(self.settings))

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = settings_from_environment()
        return self._settings

    def use_settings(self, settings: Settings) -> None:
        """Use settings built in code instead of the config file; only before first use."""
        if self._settings is not None and self._settings is not settings:
            raise RuntimeError(f"{self.main}: settings already in use (from {self._settings.source})")
        self._settings = settings

    @cached_property
    def runtime(self) -> ProcessRuntime:
        """This app's per-process router, gate and breaker sync (``runtime.py``)."""
        from flexitasks.runtime import ProcessRuntime  # the SDKs load with it: worker side only

        return ProcessRuntime(lambda: self.settings)


app = FlexitasksApp()
