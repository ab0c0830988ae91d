"""flexitasks: LLM calls as Celery tasks, with priority failover across providers and
circuit breakers that every worker process in the fleet shares through Redis.

``celery -A flexitasks worker`` finds ``app`` here. Importing the package reads no file
and loads no provider SDK: the app's settings are read when Celery first needs its
configuration (``celery_app.py`` says how to get them), and the SDKs load with the
worker's runtime.
"""

from __future__ import annotations

from flexitasks import remote as _remote  # noqa: F401  (registers the control commands, for the CLI too)
from flexitasks.celery_app import FlexitasksApp, app
from flexitasks.errors import (
    AllProvidersFailed,
    ConfigError,
    ContentRejected,
    FlexitasksError,
    InvalidRequest,
    RedeliveredTooOften,
    RequestExpired,
    RequestRejected,
)
from flexitasks.streaming.aio import achat, astream_chat
from flexitasks.streaming.client import stream_chat
from flexitasks.tasks import chat_task

__all__ = [
    "AllProvidersFailed",
    "ConfigError",
    "ContentRejected",
    "FlexitasksApp",
    "FlexitasksError",
    "InvalidRequest",
    "RedeliveredTooOften",
    "RequestExpired",
    "RequestRejected",
    "achat",
    "app",
    "astream_chat",
    "chat_task",
    "stream_chat",
]
