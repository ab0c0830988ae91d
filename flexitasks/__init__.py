"""flexitasks: LLM calls as Celery tasks, with priority failover across providers and
circuit breakers that every worker process in the fleet shares through Redis.

``celery -A flexitasks worker`` finds ``app`` here. The Celery app (and with it the
config file) is loaded on first use of ``app`` or ``chat_task``, not on import of the
package, so ``flexitasks fake-provider`` and config-free helpers stay light.
"""

from __future__ import annotations

import importlib
from typing import Any

from flexitasks.errors import (
    AllProvidersFailed,
    ConfigError,
    ContentRejected,
    FlexitasksError,
    InvalidRequest,
    RequestRejected,
)

__all__ = [
    "AllProvidersFailed",
    "ConfigError",
    "ContentRejected",
    "FlexitasksError",
    "InvalidRequest",
    "RequestRejected",
    "app",
    "chat_task",
]


def __getattr__(name: str) -> Any:
    if name == "app":
        importlib.import_module("flexitasks.remote")  # registers control commands for the CLI too
        return importlib.import_module("flexitasks.celery_app").app
    if name == "chat_task":
        importlib.import_module("flexitasks.remote")
        return importlib.import_module("flexitasks.tasks").chat_task
    raise AttributeError(f"module 'flexitasks' has no attribute {name!r}")
