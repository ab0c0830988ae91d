"""OpenAI and OpenAI-compatible endpoints through the official ``openai`` SDK.

An answer is complete when a chunk carries ``finish_reason`` (and, when the endpoint
sends it, the usage chunk that follows); a stream that ends before that is truncated,
whatever text it carried, since the SDK itself raises nothing for a cut-off stream.
"""

from __future__ import annotations

from typing import Any

import openai

from flexitasks.config import ProviderSettings
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest
from flexitasks.per_process import PerProcess
from flexitasks.providers.base import Completion, require_key
from flexitasks.providers.deadlines import StreamWatch, WatchedTransport, http_timeout
from flexitasks.providers.wire import openai_params


def _has_output(delta: Any) -> bool:
    """Generated output of any sort (text, refusal, tool call, a compatible server's reasoning)."""
    if delta is None:
        return False
    extra = getattr(delta, "model_extra", None) or {}
    return bool(
        delta.content
        or getattr(delta, "refusal", None)
        or getattr(delta, "tool_calls", None)
        or extra.get("reasoning_content")
        or extra.get("reasoning")
    )


class OpenAIAdapter:
    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._client = PerProcess(self._make_client)

    def _make_client(self) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=require_key(self.settings),
            base_url=self.settings.base_url,
            max_retries=0,
            http_client=openai.DefaultHttpxClient(transport=WatchedTransport(self.settings.ca_bundle)),
        )

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        return openai_params(request, self.settings)

    def complete(self, request: ChatRequest, budget: float) -> Completion:
        parts: list[str] = []
        finish: str | None = None
        model = self.settings.model
        usage: Any = None
        client = self._client.get()  # before the clock starts: building it is not the provider's delay
        with StreamWatch(self.settings, budget) as watch:
            try:
                stream = client.chat.completions.create(
                    **self._params(request), timeout=http_timeout(self.settings, budget)
                )
                with stream:
                    for chunk in stream:
                        watch.chunk(any(_has_output(c.delta) for c in chunk.choices))
                        parts.append("".join(c.delta.content or "" for c in chunk.choices if c.delta))
                        model = chunk.model or model
                        for choice in chunk.choices:
                            finish = choice.finish_reason or finish
                        usage = chunk.usage or usage
                        if finish and not watch.done:
                            watch.complete()  # only the usage chunk and [DONE] may follow, within TAIL_GRACE
            except Exception as exc:
                if finish is None:  # after finish_reason the answer is whole, whatever happens
                    raise watch.failure(exc) from None
        if finish is None:
            raise ProviderFailure(FailureKind.TRUNCATED, "stream ended before the answer was complete")
        if finish == "content_filter":
            raise ProviderFailure(FailureKind.CONTENT_POLICY, "answer stopped by the content filter")
        return Completion(
            content="".join(parts),
            model=model,
            finish_reason=finish,
            input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            output_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )
