"""OpenAI and OpenAI-compatible endpoints: the official ``openai`` SDK builds the request,
authenticates and raises its typed errors for HTTP error statuses; the answer's SSE lines
are read directly (``sse.py``, one ``orjson.loads`` per chunk), without a typed SDK object
per chunk, which cost about four times the rest of the call's parsing.

The request goes through the SDK's documented ``client.post(path, cast_to=httpx2.Response,
body=..., stream=True)`` (its "undocumented endpoints" API): same client, auth, base URL,
headers and typed status errors as ``chat.completions.create``, without its per-call
walk of the typed-dict parameter annotations (``maybe_transform``), which changes nothing
in a body that ``wire.openai_params`` already builds as plain JSON (about a fifth of the
adapter's CPU per call). The path goes as the absolute URL the SDK resolved for it once
per client (``base.Endpoint``, which also closes the response however the reading ends).

An answer is complete when a chunk carries ``finish_reason`` (and, when the endpoint
sends it, the usage chunk that follows); a stream that ends before that is truncated,
whatever text it carried. A ``{"error": ...}`` chunk (OpenAI-compatible servers send one
mid-stream) is the provider's failure, classified by its type.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson

from flexitasks.config import ProviderSettings
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest
from flexitasks.per_process import PerProcess
from flexitasks.providers import sse
from flexitasks.providers.base import Completion, Endpoint, OnDelta, Reading, ToolCalls, require_key
from flexitasks.providers.classify import error_event
from flexitasks.providers.deadlines import StreamWatch, WatchedTransport, http_timeout
from flexitasks.providers.wire import openai_params

_BEARER: Any = {"bearer_auth": True}  # the auth ``chat.completions.create`` asks for


def _has_output(delta: dict[str, Any]) -> bool:
    """Generated output of any sort (text, refusal, tool call, a compatible server's reasoning)."""
    return bool(
        delta.get("content")
        or delta.get("refusal")
        or delta.get("tool_calls")
        or delta.get("reasoning_content")
        or delta.get("reasoning")
    )


class _Answer:
    """One streamed answer, fed event by event."""

    def __init__(self, model: str, watch: StreamWatch, reading: Reading) -> None:
        self.parts: list[str] = []
        self.tools = ToolCalls()
        self.model = model
        self.finish: str | None = None
        self.usage: dict[str, Any] = {}
        self.ended = False  # [DONE] seen: whatever follows is ignored
        self._watch = watch
        self._reading = reading

    def feed(self, name: str, data: bytes) -> None:
        if self.ended:
            return
        if data == b"[DONE]":
            self.ended = True
            return
        chunk = orjson.loads(data)
        if not isinstance(chunk, dict):
            raise ProviderFailure(FailureKind.TRUNCATED, "malformed stream chunk (not a JSON object)")
        if name == "error" or chunk.get("error"):  # some proxies send "error": null in every chunk
            raise error_event(chunk.get("error") or chunk)
        try:
            texts = self._choices(chunk.get("choices") or ())
        except (AttributeError, TypeError, KeyError):
            raise ProviderFailure(FailureKind.TRUNCATED, "malformed stream chunk (unexpected shape)") from None
        self._watch.chunk(texts is not None)
        if texts is not None:
            self._reading.output()
            if self._reading.on_delta is not None:
                for text in texts:
                    self._reading.on_delta(text)
        self.model = chunk.get("model") or self.model
        self.usage = chunk.get("usage") or self.usage
        if self.finish and not self._watch.done:
            self._watch.complete()  # only the usage chunk and [DONE] may follow, within TAIL_GRACE

    def _choices(self, choices: Any) -> list[str] | None:
        """Take in the choices' deltas; the new text pieces, or None if no output came."""
        texts: list[str] | None = None
        for choice in choices:
            delta = choice.get("delta") or {}
            if _has_output(delta):
                texts = texts if texts is not None else []
                text = delta.get("content")
                if text:
                    self.parts.append(text)
                    texts.append(text)
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") or {}
                    self.tools.add(
                        call.get("index", 0), call.get("id"), function.get("name"), function.get("arguments")
                    )
            self.finish = choice.get("finish_reason") or self.finish
        return texts

    def completion(self) -> Completion:
        if self.finish is None:
            raise self._reading.cut("stream ended before the answer was complete")
        if self.finish == "content_filter":
            raise ProviderFailure(FailureKind.CONTENT_POLICY, "answer stopped by the content filter")
        return Completion(
            content="".join(self.parts),
            model=self.model,
            finish_reason=self.finish,
            input_tokens=self.usage.get("prompt_tokens") or 0,
            output_tokens=self.usage.get("completion_tokens") or 0,
            tool_calls=self.tools.result(),
            first_token_s=self._reading.first_token_s,
        )


class OpenAIAdapter:
    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._endpoint = PerProcess(self._make_endpoint)

    def _make_endpoint(self) -> Endpoint:
        return Endpoint.of(openai.OpenAI(
            api_key=require_key(self.settings),
            base_url=self.settings.base_url,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(transport=WatchedTransport(self.settings.ca_bundle)),
        ), "/chat/completions")

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        return openai_params(request, self.settings)

    def complete(self, request: ChatRequest, budget: float, on_delta: OnDelta | None = None) -> Completion:
        endpoint = self._endpoint.get()  # before the clock starts: building it is not the provider's delay
        params = self._params(request)
        with StreamWatch(self.settings, budget) as watch:
            reading = Reading(self.settings, on_delta)
            answer = _Answer(self.settings.model, watch, reading)
            options = {"timeout": http_timeout(self.settings, budget), "security": _BEARER}
            try:
                with endpoint.stream(params, options) as chunks:
                    for name, data in sse.events(chunks, reading.bytes_arrived):
                        answer.feed(name, data)
            except Exception as exc:
                if answer.finish is None:  # after finish_reason the answer is whole, whatever happens
                    raise reading.failed(exc, watch) from None
        return answer.completion()
