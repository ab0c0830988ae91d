"""Exceptions a caller of flexitasks can catch.

Each takes a single message argument so Celery's JSON result backend can rebuild it
on the producer side (``AsyncResult.get()`` re-raises the same class). Messages never
contain API keys: they are built from provider names, error classes and the
provider's own error text, and every message passes through ``redact`` (a provider that
echoes a key in its error text must not put it in a result, an event or a log).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flexitasks.redact import redact


class FlexitasksError(Exception):
    """Base class of every error flexitasks raises on purpose.

    ``attempts``: the provider calls made before the error (the router's errors carry
    them, so a failed run can be counted too); worker-side only, not rebuilt by a producer.
    """

    def __init__(self, message: object = "", *, attempts: Sequence[Any] = ()) -> None:
        super().__init__(redact(str(message)))
        self.attempts = list(attempts)


class ConfigError(FlexitasksError):
    """The configuration file or environment is invalid; names the file, provider and field."""


class InvalidRequest(FlexitasksError):
    """The chat request is malformed; raised before any provider is called, never retried."""


class RequestRejected(FlexitasksError):
    """A provider refused the request itself (a 400 that no other provider would accept either)."""


class ContentRejected(RequestRejected):
    """A provider refused the content (content policy); carries the provider's reason."""


class AllProvidersFailed(FlexitasksError):
    """Every eligible provider failed; the message lists each provider's last error.

    Its ``attempts`` travel with it through the result backend (as plain dicts, the second
    of its args: Celery rebuilds an exception from its args), so a producer can count the
    calls of a failed request as it counts an answered one's.
    """

    def __init__(self, message: object = "", attempts: Sequence[Any] = (), /, **kwargs: Any) -> None:
        super().__init__(message, attempts=kwargs.get("attempts", attempts))
        plain = [a.model_dump() if hasattr(a, "model_dump") else a for a in self.attempts]
        self.args = (self.args[0], plain)

    def __str__(self) -> str:
        return str(self.args[0])


class RequestExpired(FlexitasksError):
    """The request waited in the queue past its deadline (``request_timeout`` from when it was
    sent); no provider was called. Never retried."""


class RedeliveredTooOften(FlexitasksError):
    """The message was delivered more than ``celery.max_redeliveries`` times without finishing
    (it keeps killing its worker); failed instead of looping for ever."""
