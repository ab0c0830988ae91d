"""The Celery application: settings that keep LLM work safe, nothing else.

Loads the flexitasks config once per process and maps it onto Celery settings.
Worker-side hooks live in ``worker.py``, remote control in ``remote.py``, the task in
``tasks.py``; this module only builds the app.
"""

from __future__ import annotations

import os
import sys

from celery import Celery

from flexitasks.config import Settings, load_settings
from flexitasks.errors import ConfigError


def _is_command_line() -> bool:
    """Are we the ``celery`` or ``flexitasks`` command (where a traceback helps nobody)?"""
    argv0 = sys.argv[0] if sys.argv else ""
    return os.path.basename(argv0) in ("celery", "flexitasks") or argv0.endswith(
        os.path.join("celery", "__main__.py")
    )


def _load() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        if _is_command_line():
            # A worker (or the CLI) with a bad file stops here with one clear message.
            sys.stderr.write(f"flexitasks: {exc}\n")
            raise SystemExit(2) from None
        raise


settings = _load()


def celery_config(s: Settings) -> dict[str, object]:
    longest_task = s.retry.request_timeout + s.celery.retry_backoff_max
    return {
        "broker_url": s.celery.broker_url,
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
        # Redelivery of an unacked message must not happen while it still runs.
        "broker_transport_options": {"visibility_timeout": max(3600, int(2 * longest_task))},
        "result_expires": s.celery.result_expires,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_time_limit": int(s.retry.request_timeout + 30),
        "task_soft_time_limit": int(s.retry.request_timeout + 15),
    }


app = Celery("flexitasks")
app.conf.update(celery_config(settings))
app.conf.imports = ("flexitasks.tasks", "flexitasks.remote", "flexitasks.worker")
