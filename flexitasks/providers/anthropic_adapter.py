"""Anthropic's Messages API: the official ``anthropic`` SDK builds the request,
authenticates and raises its typed errors for HTTP error statuses; the events are read
directly (``sse.py``, one ``orjson.loads`` each), without a typed SDK object per event.
As in ``openai_adapter``, the request goes through the SDK's documented ``client.post``
(same client, auth and version headers, typed errors and timeouts) without the per-call
parameter transform of ``messages.create``, which changes nothing in the plain-JSON body
``wire.anthropic_params`` builds.

System messages become the ``system`` parameter. An answer is complete once
``message_delta`` carries the ``stop_reason`` (with the output usage); ``message_stop``
only closes the stream, so its absence costs at most ``TAIL_GRACE``. A stream that ends
before the stop reason is truncated, whatever text it carried. ``event: error`` after
HTTP 200 (``overloaded_error``, ``api_error``, ...) is the provider's failure, by its type.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import orjson

from flexitasks.config import ProviderSettings
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest
from flexitasks.per_process import PerProcess
from flexitasks.providers import sse
from flexitasks.providers.base import Completion, Endpoint, OnDelta, Reading, ToolCalls, require_key
from flexitasks.providers.classify import error_event
from flexitasks.providers.deadlines import StreamWatch, WatchedTransport, http_timeout
from flexitasks.providers.wire import anthropic_params

_OUTPUT_DELTAS = frozenset(
    {"text_delta", "thinking_delta", "input_json_delta", "citations_delta", "signature_delta"}
)


_INPUT_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def _input_tokens(usage: dict[str, Any]) -> int:
    """Every input token billed: Anthropic counts prompt-cache writes and reads apart from
    ``input_tokens`` (which holds only the uncached rest)."""
    return sum(int(usage.get(key) or 0) for key in _INPUT_USAGE)


class _Answer:
    """One streamed answer, fed event by event."""

    def __init__(self, model: str, watch: StreamWatch, reading: Reading) -> None:
        self.parts: list[str] = []
        self.tools = ToolCalls()
        self.model = model
        self.stop_reason: str | None = None
        self.input_tokens = self.output_tokens = 0
        self._watch = watch
        self._reading = reading

    def feed(self, name: str, data: bytes) -> None:
        event = orjson.loads(data)
        if not isinstance(event, dict):
            raise ProviderFailure(FailureKind.TRUNCATED, "malformed stream event (not a JSON object)")
        kind = event.get("type") or name
        if kind == "error":
            raise error_event(event.get("error"))
        try:
            text = self._take(kind, event)
        except (AttributeError, TypeError, KeyError):
            raise ProviderFailure(FailureKind.TRUNCATED, f"malformed {kind} event (unexpected shape)") from None
        if text is not None and self._reading.on_delta is not None:
            self._reading.on_delta(text)

    def _take(self, kind: str, event: dict[str, Any]) -> str | None:
        """Take in one event; the text piece it carried, if any."""
        delta = event.get("delta") or {}
        output = kind == "content_block_delta" and delta.get("type") in _OUTPUT_DELTAS
        self._watch.chunk(output, progress=kind != "ping")
        if output:
            self._reading.output()
        if kind == "content_block_delta":
            if delta.get("type") == "text_delta":
                self.parts.append(delta["text"])
                return str(delta["text"])
            if delta.get("type") == "input_json_delta":
                self.tools.add(event.get("index", 0), None, None, delta.get("partial_json"))
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use":
                start = block.get("input")
                self.tools.add(event.get("index", 0), block.get("id"), block.get("name"),
                               json.dumps(start) if start else None)
        elif kind == "message_start":
            message = event.get("message") or {}
            self.model = message.get("model") or self.model
            self.input_tokens = _input_tokens(message.get("usage") or {})
        elif kind == "message_delta":
            self.stop_reason = delta.get("stop_reason") or self.stop_reason
            usage = event.get("usage") or {}
            self.output_tokens = usage.get("output_tokens") or self.output_tokens
            self.input_tokens = _input_tokens(usage) or self.input_tokens  # newer APIs repeat it here
            if self.stop_reason and not self._watch.done:
                self._watch.complete()  # only message_stop may follow, within TAIL_GRACE
        return None

    def completion(self) -> Completion:
        if self.stop_reason is None:
            raise self._reading.cut("stream ended before the stop_reason (incomplete)")
        if self.stop_reason == "refusal":
            raise ProviderFailure(FailureKind.CONTENT_POLICY, "the model refused the request")
        return Completion(
            content="".join(self.parts),
            model=self.model,
            finish_reason=self.stop_reason,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            tool_calls=self.tools.result(),
            first_token_s=self._reading.first_token_s,
        )


class AnthropicAdapter:
    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._endpoint = PerProcess(self._make_endpoint)

    def _make_endpoint(self) -> Endpoint:
        return Endpoint.of(anthropic.Anthropic(
            api_key=require_key(self.settings),
            base_url=self.settings.base_url,
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(transport=WatchedTransport(self.settings.ca_bundle)),
        ), "/v1/messages")

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        return anthropic_params(request, self.settings)

    def complete(self, request: ChatRequest, budget: float, on_delta: OnDelta | None = None) -> Completion:
        endpoint = self._endpoint.get()  # before the clock starts: building it is not the provider's delay
        params = self._params(request)
        with StreamWatch(self.settings, budget) as watch:
            reading = Reading(self.settings, on_delta)
            answer = _Answer(self.settings.model, watch, reading)
            try:
                with endpoint.stream(params, {"timeout": http_timeout(self.settings, budget)}) as chunks:
                    for name, data in sse.events(chunks, reading.bytes_arrived):
                        answer.feed(name, data)
            except Exception as exc:
                if answer.stop_reason is None:  # after the stop reason the answer is whole, whatever happens
                    raise reading.failed(exc, watch) from None
        return answer.completion()
