"""Anthropic's Messages API through the official ``anthropic`` SDK.

System messages become the ``system`` parameter. An answer is complete once
``message_delta`` carries the ``stop_reason`` (with the output usage); ``message_stop``
only closes the stream, so its absence costs at most ``TAIL_GRACE``. A stream that ends
before the stop reason is truncated, whatever text it carried.
"""

from __future__ import annotations

from typing import Any

import anthropic

from flexitasks.config import ProviderSettings
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest
from flexitasks.per_process import PerProcess
from flexitasks.providers.base import Completion, require_key
from flexitasks.providers.deadlines import StreamWatch, WatchedTransport, http_timeout
from flexitasks.providers.wire import anthropic_params

_OUTPUT_DELTAS = ("text_delta", "thinking_delta", "input_json_delta", "citations_delta", "signature_delta")


class AnthropicAdapter:
    def __init__(self, settings: ProviderSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self._client = PerProcess(self._make_client)

    def _make_client(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            api_key=require_key(self.settings),
            base_url=self.settings.base_url,
            max_retries=0,
            http_client=anthropic.DefaultHttpxClient(transport=WatchedTransport(self.settings.ca_bundle)),
        )

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        return anthropic_params(request, self.settings)

    def complete(self, request: ChatRequest, budget: float) -> Completion:
        parts: list[str] = []
        model = self.settings.model
        stop_reason: str | None = None
        input_tokens = output_tokens = 0
        client = self._client.get()  # before the clock starts: building it is not the provider's delay
        with StreamWatch(self.settings, budget) as watch:
            try:
                stream = client.messages.create(
                    **self._params(request), timeout=http_timeout(self.settings, budget)
                )
                with stream:
                    for event in stream:
                        delta_type = getattr(getattr(event, "delta", None), "type", "")
                        watch.chunk(
                            event.type == "content_block_delta" and delta_type in _OUTPUT_DELTAS,
                            progress=event.type != "ping",
                        )
                        if event.type == "message_start":
                            model = event.message.model or model
                            input_tokens = event.message.usage.input_tokens or 0
                        elif event.type == "content_block_delta" and delta_type == "text_delta":
                            parts.append(event.delta.text)
                        elif event.type == "message_delta":
                            stop_reason = event.delta.stop_reason or stop_reason
                            output_tokens = event.usage.output_tokens or output_tokens
                            if stop_reason and not watch.done:
                                watch.complete()  # only message_stop may follow, within TAIL_GRACE
            except Exception as exc:
                if stop_reason is None:  # after the stop reason the answer is whole, whatever happens
                    raise watch.failure(exc) from None
        if stop_reason is None:
            raise ProviderFailure(FailureKind.TRUNCATED, "stream ended before the stop_reason (incomplete)")
        if stop_reason == "refusal":
            raise ProviderFailure(FailureKind.CONTENT_POLICY, "the model refused the request")
        return Completion(
            content="".join(parts),
            model=model,
            finish_reason=stop_reason,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
