"""flexitasks: LLM calls as Celery tasks, with priority failover across providers and
circuit breakers that every worker process in the fleet shares through Redis.

``celery -A flexitasks worker`` finds ``app`` here.
"""

from flexitasks.app import app
from flexitasks.errors import (
    AllProvidersFailed,
    ConfigError,
    ContentRejected,
    FlexitasksError,
    InvalidRequest,
    RequestRejected,
)
from flexitasks.tasks import chat_task
from flexitasks import remote as _remote  # noqa: F401  (registers control commands for the CLI too)

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
