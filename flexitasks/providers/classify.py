"""The SDK mapping: what a provider's exception or error event means, decided in one place.

Turns whatever the official SDKs (or their HTTP layer, mid-stream) raise, and the error
events providers send inside a stream, into a ``ProviderFailure`` with a ``FailureKind``
(both in ``flexitasks.failures``). The failover policy reads only the kind; nothing else in
flexitasks inspects SDK exceptions. Imports no SDK: it checks only the exception classes
of SDKs the process has already loaded. Pure: no I/O. It lives beside the adapters, so
providers/ never imports failover/; the router imports it from here.
"""

from __future__ import annotations

import email.utils
import json
import math
import sys
import time
from collections.abc import Mapping
from typing import Any

import httpx2

from flexitasks.failures import FailureKind, ProviderFailure

_CONTEXT_MARKERS = (
    "context_length_exceeded",
    "prompt is too long",
    "maximum context length",
    "too many tokens",
)
_POLICY_MARKERS = (
    "content_policy",  # OpenAI code content_policy_violation
    "content_filter",  # Azure OpenAI code content_filter
    "content filtering",  # Anthropic "Output blocked by content filtering policy"
    "content policy",
    "safety system",
    "responsibleaipolicyviolation",  # Azure inner error code
)

_BILLING_MARKERS = (
    "insufficient_quota",  # OpenAI 429: "You exceeded your current quota"
    "billing_hard_limit_reached",  # OpenAI: the account's spend limit
    "billing_not_active",
    "billing_error",
    "credit balance is too low",  # Anthropic 400
    "spend limit",
    "spending limit",
)
_RATE_MARKERS = ("rate_limit", "rate limit", "too many requests")


def _sdk_types(attr: str) -> tuple[type[BaseException], ...]:
    """The exception class ``attr`` of each SDK this process has imported. An SDK that was
    never imported raised nothing, so classifying never imports one (a worker serving only
    OpenAI-kind providers does not load the anthropic SDK)."""
    return tuple(getattr(m, attr) for name in ("openai", "anthropic") if (m := sys.modules.get(name)) is not None)


_HTTP_TIMEOUT = (httpx2.TimeoutException,)
_HTTP_CONNECTION = (httpx2.TransportError,)
_HTTP_MALFORMED = (json.JSONDecodeError, httpx2.DecodingError)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds, or an HTTP date (relative to
    ``now``, epoch seconds, default the wall clock). None when absent or unreadable."""
    if not value or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(seconds, 0.0)
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


def retry_after_from(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The provider's wait: ``retry-after-ms`` (OpenAI, Anthropic) is more precise than
    ``retry-after``, so it wins when both are present."""
    ms = parse_retry_after(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    return parse_retry_after(headers.get("retry-after"), now)


def _error_text(exc: Any) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    message = err.get("message") if isinstance(err, dict) else None
    return str(message or exc.message or f"HTTP {exc.status_code}")[:500]


def _error_kind(exc: Any) -> str:
    """The error's ``type`` and ``code`` from the body, as far as it has them."""
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    return f"{err.get('type') or ''} {err.get('code') or ''}" if isinstance(err, dict) else ""


def _has(haystack: str, markers: tuple[str, ...]) -> bool:
    return any(m in haystack for m in markers)


def _classify_status(exc: Any) -> ProviderFailure:
    status = exc.status_code
    if status == 200:  # an error event inside a stream the provider had accepted (Anthropic SDK)
        return error_event(exc.body.get("error") if isinstance(exc.body, dict) else None, fallback=exc.message)
    text = _error_text(exc)
    code = str(getattr(exc, "code", None) or "")
    haystack = f"{code} {_error_kind(exc)} {text}".lower()
    retry_after = retry_after_from(exc.response.headers)
    if status == 402 or _has(haystack, _BILLING_MARKERS):
        return ProviderFailure(FailureKind.BILLING, text, status=status)
    if status == 429:
        return ProviderFailure(FailureKind.RATE_LIMITED, text, status=status, retry_after=retry_after)
    if status == 408 or status >= 500:
        return ProviderFailure(FailureKind.UNAVAILABLE, text, status=status, retry_after=retry_after)
    if status in (401, 403, 404):
        return ProviderFailure(FailureKind.MISCONFIGURED, text, status=status)
    if status == 413 or _has(haystack, _CONTEXT_MARKERS):
        return ProviderFailure(FailureKind.CONTEXT_LENGTH, text, status=status)
    if _has(haystack, _POLICY_MARKERS):
        return ProviderFailure(FailureKind.CONTENT_POLICY, text, status=status)
    return ProviderFailure(FailureKind.BAD_REQUEST, text, status=status)


def error_event(error: Any, fallback: str = "") -> ProviderFailure:
    """An error the provider sent inside a stream it had accepted with HTTP 200 (Anthropic's
    ``event: error``, an OpenAI-compatible ``data: {"error": {...}}``), by its type.

    The request was accepted, so the provider failed, not the request: rate-limit errors
    are ``rate_limited``, billing errors ``billing``, overloaded, api, server and unknown
    errors ``unavailable``; only a context-length or content-policy error says otherwise.
    """
    err = error if isinstance(error, dict) else {}
    type_ = str(err.get("type") or "")
    code = str(err.get("code") or "")
    message = str(err.get("message") or fallback or type_ or "error event")[:500]
    text = f"{type_ or code or 'error'} in the stream: {message}"
    haystack = f"{type_} {code} {message}".lower()
    if _has(haystack, _BILLING_MARKERS):
        return ProviderFailure(FailureKind.BILLING, text)
    if _has(haystack, _RATE_MARKERS):
        return ProviderFailure(FailureKind.RATE_LIMITED, text)
    if _has(haystack, _CONTEXT_MARKERS):
        return ProviderFailure(FailureKind.CONTEXT_LENGTH, text)
    if _has(haystack, _POLICY_MARKERS):
        return ProviderFailure(FailureKind.CONTENT_POLICY, text)
    return ProviderFailure(FailureKind.UNAVAILABLE, text)


def is_connection_error(exc: BaseException) -> bool:
    """The connection failed or was dropped (not a timeout, not an HTTP status)."""
    if isinstance(exc, _HTTP_TIMEOUT + _sdk_types("APITimeoutError")):
        return False
    return isinstance(exc, _HTTP_CONNECTION + _sdk_types("APIConnectionError"))


def classify(exc: BaseException) -> ProviderFailure:
    """Map an exception raised while calling a provider to its failure kind."""
    if isinstance(exc, ProviderFailure):
        return exc
    if isinstance(exc, _sdk_types("APIStatusError")):
        return _classify_status(exc)
    if isinstance(exc, _HTTP_TIMEOUT + _sdk_types("APITimeoutError")):
        return ProviderFailure(FailureKind.TIMEOUT, f"timed out ({type(exc).__name__})")
    if isinstance(exc, _HTTP_CONNECTION + _sdk_types("APIConnectionError")):
        return ProviderFailure(FailureKind.UNAVAILABLE, f"connection failed ({type(exc).__name__})")
    if isinstance(exc, _HTTP_MALFORMED + _sdk_types("APIResponseValidationError")):
        return ProviderFailure(FailureKind.TRUNCATED, f"malformed response ({type(exc).__name__})")
    if isinstance(exc, _sdk_types("APIError")):  # the openai SDK's in-band stream error: no status
        body = getattr(exc, "body", None)
        return error_event(body.get("error", body) if isinstance(body, dict) else None, fallback=str(exc))
    return ProviderFailure(FailureKind.UNAVAILABLE, f"unexpected {type(exc).__name__}: {exc}"[:300])
