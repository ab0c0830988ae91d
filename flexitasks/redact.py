"""Secret redaction: key-like strings never leave a process in text flexitasks produces.

Owns ``redact(text)`` (API keys such as ``sk-...`` / ``sk-ant-...``, bearer tokens,
``api_key=...`` pairs, passwords in URLs) and ``RedactingFilter``, a logging filter that
applies it to every record a handler emits (message, arguments and traceback). Used where
an error becomes text (``ProviderFailure``, ``FlexitasksError``, ``Attempt.error``) and on
the worker's log handlers. Pure: ``re`` and ``logging`` only, no I/O, nothing of
flexitasks, so the lowest layers may import it.

Why redact rather than trust providers: real APIs echo what they were sent ("Incorrect API
key provided: sk-..."), proxies echo headers, and SDK exceptions carry whole bodies; a
result, an event or a log line is read by far more people than hold the key.
"""

from __future__ import annotations

import logging
import re
from typing import Any

MASK = "[REDACTED]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # OpenAI (sk-..., sk-proj-..., sk-svcacct-...), Anthropic (sk-ant-...), and look-alikes (rk-, pk-).
    (re.compile(r"\b(sk-ant-|sk-|rk-|pk-)[A-Za-z0-9_\-]{10,}"), r"\1" + MASK),
    # Other vendors' key shapes: Google (AIza...), Groq (gsk_...), xAI (xai-...), Hugging Face (hf_...).
    (re.compile(r"\b(AIza|gsk_|xai-|hf_)[A-Za-z0-9_\-]{16,}"), r"\1" + MASK),
    # Authorization: Bearer <token>
    (re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9\-._~+/]{16,}=*"), r"\1\2" + MASK),
    # api_key=..., "x-api-key": "...", token: ..., password=..., secret=...
    (
        re.compile(
            r"(?i)\b((?:x-)?api[_-]?key|access[_-]?token|auth[_-]?token|token|secret|password|passwd)"
            r"(\"?'?\s*[:=]\s*\"?'?)([^\s\"',;&}]{6,})"
        ),
        r"\1\2" + MASK,
    ),
    # scheme://user:password@host
    (re.compile(r"\b([a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s/]+@"), r"\1" + MASK + "@"),
)


def redact(text: str) -> str:
    """``text`` with every key-like string replaced by ``[REDACTED]`` (a prefix such as
    ``sk-ant-`` is kept so a reader can tell which kind of key it was)."""
    if not text:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def looks_secret(text: str) -> bool:
    """True if ``text`` holds anything ``redact`` would hide."""
    return redact(text) != text


class RedactingFilter(logging.Filter):
    """Redacts a record in place before a handler formats it; never drops a record.

    Attached to handlers (a logger's own filters do not see records propagated from
    child loggers), so it covers Celery's, the SDKs' and our own log lines alike.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it for logging to report
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add one ``RedactingFilter`` to every handler of ``logger`` (default: the root logger)."""
    target = logger if logger is not None else logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def redact_value(value: Any) -> Any:
    """``redact`` applied to every string inside a JSON-like value (dicts, lists)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value
