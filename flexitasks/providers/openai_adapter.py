"""OpenAI and OpenAI-compatible endpoints through the official ``openai`` SDK."""

from __future__ import annotations

from typing import Any

import openai

from flexitasks.config import ProviderSettings
from flexitasks.failover.classify import FailureKind, ProviderFailure, classify
from flexitasks.models import ChatRequest
from flexitasks.providers.base import Completion, PerProcessClient, StreamWatch, http_timeout, require_key


class OpenAIAdapter:
    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._client = PerProcessClient(self._make_client)

    def _make_client(self) -> openai.OpenAI:
        return openai.OpenAI(api_key=require_key(self.settings), base_url=self.settings.base_url, max_retries=0)

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.settings.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens or self.settings.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    def complete(self, request: ChatRequest, budget: float) -> Completion:
        watch = StreamWatch(self.settings, budget)
        parts: list[str] = []
        finish: str | None = None
        model = self.settings.model
        usage: Any = None
        try:
            stream = self._client.get().chat.completions.create(
                **self._params(request), timeout=http_timeout(self.settings, budget)
            )
            with stream:
                for chunk in stream:
                    text = "".join(c.delta.content or "" for c in chunk.choices if c.delta)
                    watch.chunk(bool(text))
                    parts.append(text)
                    model = chunk.model or model
                    for choice in chunk.choices:
                        finish = choice.finish_reason or finish
                    usage = chunk.usage or usage
                    if finish and usage:
                        break  # complete: don't wait for [DONE]
        except Exception as exc:
            raise classify(exc) from None
        if finish is None:
            raise ProviderFailure(FailureKind.TRUNCATED, "stream ended before the answer was complete")
        if finish == "content_filter":
            raise ProviderFailure(FailureKind.CONTENT_POLICY, "answer stopped by the provider's content filter")
        return Completion(
            content="".join(parts),
            model=model,
            finish_reason=finish,
            input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            output_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )
