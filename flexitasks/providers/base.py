"""What a provider adapter is: one chat call, streamed, normalised, or a ProviderFailure.

Adapters own the SDK client and the translation between ``ChatRequest`` and one API's
wire format. They stream internally so a silent or stalling provider is noticed while
the answer is still coming (``deadlines.py``), and they never hand back a truncated
answer as success. They know nothing of breakers, retries or Celery.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import httpx2

from flexitasks.config import ProviderSettings
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest
from flexitasks.providers.classify import is_connection_error
from flexitasks.providers.deadlines import StreamWatch

OnDelta = Callable[[str], None]
"""Called with each piece of answer text as it arrives (``flexitasks.streaming`` relays it)."""


@dataclass(frozen=True)
class Completion:
    content: str
    model: str
    finish_reason: str
    input_tokens: int
    output_tokens: int
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    """``[{"id", "name", "arguments": <JSON text as the provider sent it>}]``, in the answer's order."""
    first_token_s: float | None = None
    """Seconds from the request being sent to the first generated output."""


class ProviderAdapter(Protocol):
    name: str

    def complete(self, request: ChatRequest, budget: float, on_delta: OnDelta | None = None) -> Completion:
        """One call, bounded by ``budget`` seconds in total; raises ``ProviderFailure``."""
        ...


@dataclass(frozen=True)
class Endpoint:
    """An SDK client (``openai.OpenAI`` or ``anthropic.Anthropic``) and the absolute URL of
    the one API path an adapter posts to, resolved once by the SDK itself (its
    ``_prepare_url``, which merges a path into the base URL). ``client.post`` takes an
    absolute URL as it takes a path, and only parses it: merging a path into the base URL on
    every call cost about 28 us of the SDK's 230 us of request building."""

    client: Any
    url: str

    @classmethod
    def of(cls, client: Any, path: str) -> Endpoint:
        return cls(client, str(client._prepare_url(path)))

    @contextmanager
    def stream(self, body: dict[str, Any], options: dict[str, Any]) -> Iterator[Iterator[bytes]]:
        """POST ``body`` with the answer streamed, through the SDK's documented ``client.post``
        (its auth, headers and typed status errors); yields the answer's bytes as they arrive
        (``body_chunks``) and closes the response after, however the reading ends."""
        response = self.client.post(self.url, cast_to=httpx2.Response, body=body, stream=True, options=options)
        try:
            yield body_chunks(response)
        finally:
            response.close()


def body_chunks(response: httpx2.Response) -> Iterator[bytes]:
    """The answer's bytes as they arrive. Not content-encoded (an event stream never is, in
    practice): the response's own byte stream, as the transport hands it over, without
    ``iter_raw``'s re-chunking generator around every chunk. The caller closes the response."""
    if "content-encoding" in response.headers:
        return response.iter_bytes()
    return iter(cast(httpx2.SyncByteStream, response.stream))


def require_key(settings: ProviderSettings) -> str:
    """The provider's key; a provider configured without ``api_key_env`` (a local
    OpenAI-compatible server, say) sends a placeholder, as the SDKs insist on one."""
    if settings.api_key_env is None:
        return "no-key"
    key = settings.api_key
    if key is None:
        raise ProviderFailure(
            FailureKind.MISCONFIGURED, f"environment variable {settings.api_key_env} is empty or unset"
        )
    return key.get_secret_value()


class ToolCalls:
    """Streamed tool-call pieces, joined per call: ids and names arrive once (some servers
    repeat them on every piece, so the first wins), arguments as JSON text in pieces."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, index: int, call_id: str | None, name: str | None, arguments: str | None) -> None:
        call = self._calls.get(index)
        if call is None:
            call = self._calls[index] = {"id": "", "name": "", "arguments": []}
        if call_id and not call["id"]:
            call["id"] = call_id
        if name and not call["name"]:
            call["name"] = name
        if arguments:
            call["arguments"].append(arguments)

    def result(self) -> list[dict[str, str]]:
        return [
            {"id": c["id"], "name": c["name"], "arguments": "".join(c["arguments"]) or "{}"}
            for _, c in sorted(self._calls.items())
        ]


class Reading:
    """What both adapters note while one answer streams in: when bytes and the first
    output arrived, and what a failure means given that (issue 11: silence, then a drop)."""

    def __init__(self, settings: ProviderSettings, on_delta: OnDelta | None) -> None:
        self.settings = settings
        self.on_delta = on_delta
        self.start = self.last_bytes = time.monotonic()
        self.first_token_s: float | None = None

    def bytes_arrived(self) -> None:
        self.last_bytes = time.monotonic()

    def output(self) -> None:
        """Generated output arrived (text, a tool call, thinking)."""
        if self.first_token_s is None:
            self.first_token_s = time.monotonic() - self.start

    def failed(self, exc: BaseException, watch: StreamWatch) -> ProviderFailure:
        """The failure to report for ``exc``. A connection that stayed silent for more than
        half the first-token limit and was then dropped or closed before any output is a
        silent route: a timeout (next provider, no same-provider retry), so its wait is not
        paid twice."""
        failure = watch.failure(exc)
        if failure.kind is FailureKind.UNAVAILABLE and is_connection_error(exc):
            return self.silent_drop() or failure
        return failure

    def cut(self, what: str) -> ProviderFailure:
        """The stream ended cleanly but before the answer was complete."""
        return self.silent_drop() or ProviderFailure(FailureKind.TRUNCATED, what)

    def silent_drop(self) -> ProviderFailure | None:
        """A timeout, if no output came and the connection was silent for over half of
        ``first_token_timeout`` before it ended."""
        silence = time.monotonic() - self.last_bytes
        if self.first_token_s is not None or silence <= self.settings.first_token_timeout / 2:
            return None
        return ProviderFailure(
            FailureKind.TIMEOUT, f"no byte for {silence:.1f}s, then the connection closed, before any output"
        )
