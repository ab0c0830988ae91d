"""Anthropic's Messages API through the official ``anthropic`` SDK.

System messages become the ``system`` parameter; a stream without ``message_stop``
is truncated, whatever text it carried.
"""

from __future__ import annotations

from typing import Any

import anthropic

from flexitasks.config import ProviderSettings
from flexitasks.failover.classify import FailureKind, ProviderFailure, classify
from flexitasks.models import ChatRequest
from flexitasks.providers.base import Completion, PerProcessClient, StreamWatch, http_timeout, require_key


class AnthropicAdapter:
    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._client = PerProcessClient(self._make_client)

    def _make_client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key=require_key(self.settings), base_url=self.settings.base_url, max_retries=0)

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.turns],
            "max_tokens": request.max_tokens or self.settings.max_tokens,
            "stream": True,
        }
        if request.system:
            params["system"] = request.system
        if request.temperature is not None:
            params["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
        return params

    def complete(self, request: ChatRequest, budget: float) -> Completion:
        watch = StreamWatch(self.settings, budget)
        parts: list[str] = []
        model = self.settings.model
        stop_reason: str | None = None
        input_tokens = output_tokens = 0
        finished = False
        try:
            stream = self._client.get().messages.create(
                **self._params(request), timeout=http_timeout(self.settings, budget)
            )
            with stream:
                for event in stream:
                    text = ""
                    if event.type == "message_start":
                        model = event.message.model or model
                        input_tokens = event.message.usage.input_tokens or 0
                    elif event.type == "content_block_delta" and getattr(event.delta, "type", "") == "text_delta":
                        text = event.delta.text
                    elif event.type == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        output_tokens = event.usage.output_tokens or output_tokens
                    elif event.type == "message_stop":
                        finished = True
                    watch.chunk(bool(text))
                    parts.append(text)
                    if finished:
                        break
        except Exception as exc:
            raise classify(exc) from None
        if not finished:
            raise ProviderFailure(FailureKind.TRUNCATED, "stream ended before message_stop")
        if stop_reason == "refusal":
            raise ProviderFailure(FailureKind.CONTENT_POLICY, "the model refused the request")
        return Completion(
            content="".join(parts),
            model=model,
            finish_reason=stop_reason or "end_turn",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
