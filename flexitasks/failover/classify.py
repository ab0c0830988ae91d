"""The SDK mapping: what a provider's exception means, decided in one place.

Turns whatever the official SDKs (or their HTTP layer, mid-stream) raise into a
``ProviderFailure`` with a ``FailureKind`` (both in ``flexitasks.failures``). The failover
policy reads only the kind; nothing else in flexitasks inspects SDK exceptions. Pure: no I/O.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping

import anthropic
import httpx2
import openai

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

_API_STATUS = (openai.APIStatusError, anthropic.APIStatusError)
_API_TIMEOUT = (openai.APITimeoutError, anthropic.APITimeoutError, httpx2.TimeoutException)
_API_CONNECTION = (openai.APIConnectionError, anthropic.APIConnectionError, httpx2.TransportError)
_MALFORMED = (
    openai.APIResponseValidationError,
    anthropic.APIResponseValidationError,
    json.JSONDecodeError,
    httpx2.DecodingError,
)


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


def _error_text(exc: openai.APIStatusError | anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    err = body.get("error") if isinstance(body.get("error"), dict) else body
    message = err.get("message") if isinstance(err, dict) else None
    return str(message or exc.message or f"HTTP {exc.status_code}")[:500]


def _classify_status(exc: openai.APIStatusError | anthropic.APIStatusError) -> ProviderFailure:
    status = exc.status_code
    text = _error_text(exc)
    code = str(getattr(exc, "code", None) or "")
    haystack = f"{code} {text}".lower()
    retry_after = retry_after_from(exc.response.headers)
    if status == 429:
        return ProviderFailure(FailureKind.RATE_LIMITED, text, status=status, retry_after=retry_after)
    if status == 408 or status >= 500:
        return ProviderFailure(FailureKind.UNAVAILABLE, text, status=status, retry_after=retry_after)
    if status in (401, 403, 404):
        return ProviderFailure(FailureKind.MISCONFIGURED, text, status=status)
    if status == 413 or any(m in haystack for m in _CONTEXT_MARKERS):
        return ProviderFailure(FailureKind.CONTEXT_LENGTH, text, status=status)
    if any(m in haystack for m in _POLICY_MARKERS):
        return ProviderFailure(FailureKind.CONTENT_POLICY, text, status=status)
    return ProviderFailure(FailureKind.BAD_REQUEST, text, status=status)


def classify(exc: BaseException) -> ProviderFailure:
    """Map an exception raised while calling a provider to its failure kind."""
    if isinstance(exc, ProviderFailure):
        return exc
    if isinstance(exc, _API_STATUS):
        return _classify_status(exc)
    if isinstance(exc, _API_TIMEOUT):
        return ProviderFailure(FailureKind.TIMEOUT, f"timed out ({type(exc).__name__})")
    if isinstance(exc, _API_CONNECTION):
        return ProviderFailure(FailureKind.UNAVAILABLE, f"connection failed ({type(exc).__name__})")
    if isinstance(exc, _MALFORMED):
        return ProviderFailure(FailureKind.TRUNCATED, f"malformed response ({type(exc).__name__})")
    return ProviderFailure(FailureKind.UNAVAILABLE, f"unexpected {type(exc).__name__}: {exc}"[:300])
