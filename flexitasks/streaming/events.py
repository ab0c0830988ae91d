"""The wire format of a streamed task, and how a reader turns it into caller events.

Owns: the task header that asks for streaming, the Redis stream key of a task, the
encoding of one stream entry, and ``Replay``, the pure state machine that turns the
entries a worker wrote into the events ``stream_chat`` yields. No I/O here: the
worker's writer (``writer.py``) and the readers (``client.py``, ``aio.py``) do that.

Entries a worker writes (one JSON object in field ``e`` of each stream entry):

- ``{"type": "attempt", "provider", "t"}`` before the first text of a provider attempt
  (``t``: wall-clock time the worker received that text, for latency measurements);
- ``{"type": "delta", "text"}``: answer text (consecutive pieces may be merged);
- ``{"type": "restart", "provider", "reason"}``: that attempt failed after sending text;
- ``{"type": "tool_call", "tool_call": {"id", "name", "arguments"}}``: once complete;
- ``{"type": "done", "result"}``: the task's result, last;
- ``{"type": "failed"}``: the task failed for good; the reader raises what
  ``AsyncResult.get()`` raises.

A caller sees ``delta``, ``restart``, ``tool_call`` and ``done``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

STREAM_HEADER = "flexitasks_stream"
"""Task header (never a task option, so never sent to a provider) asking the worker to stream."""

FIELD = "e"
MAXLEN = 10_000
"""Entries kept per stream (trimmed approximately); deltas are merged per write, so an
answer rarely needs more than a few hundred."""
LIVE_TTL = 900
"""Seconds a stream lives after its last write while the task runs (refreshed per write)."""
DONE_TTL = 60
"""Seconds a stream lives once its task ended: long enough for a late reader, short
enough that a busy fleet does not keep every answer twice."""


def stream_key(key_prefix: str, task_id: str) -> str:
    return f"{key_prefix}:stream:{task_id}"


def _jsonable(value: Any) -> Any:
    """What kombu's JSON encoder would store for it (``__json__``), or a pydantic model's dump."""
    if hasattr(value, "__json__"):
        return value.__json__()
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def encode(event: dict[str, Any]) -> dict[str, str]:
    return {FIELD: json.dumps(event, separators=(",", ":"), default=_jsonable)}


def decode(fields: dict[Any, Any]) -> dict[str, Any]:
    raw = fields.get(FIELD) if FIELD in fields else fields.get(FIELD.encode())
    return json.loads(raw)


def is_terminal(event: dict[str, Any]) -> bool:
    return event.get("type") in ("done", "failed")


@dataclass
class Replay:
    """What the caller has been shown so far; turns written entries into caller events.

    A provider attempt that sent text and then ended without a ``restart`` (its worker
    was killed and the broker redelivered the task, say) is voided here: the next
    ``attempt`` entry becomes a ``restart`` with reason ``"task restarted"``.
    """

    provider: str | None = None
    text_received_at: float | None = None  # when the worker got the current attempt's first text
    unconfirmed_text: bool = False  # text shown since the last restart
    finished: bool = False
    failed: bool = False
    result: Any = None

    def feed(self, entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for event in entries:
            if self.finished:
                break
            out.extend(self._one(event))
        return out

    def _one(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "attempt":
            shown = []
            if self.unconfirmed_text:
                shown.append({"type": "restart", "provider": self.provider, "reason": "task restarted"})
            self.provider, self.unconfirmed_text = event.get("provider"), False
            self.text_received_at = event.get("t")
            return shown
        if kind == "delta":
            self.unconfirmed_text = self.unconfirmed_text or bool(event.get("text"))
            return [{"type": "delta", "text": event.get("text", "")}]
        if kind == "restart":
            self.unconfirmed_text = False
            return [{"type": "restart", "provider": event.get("provider"), "reason": event.get("reason")}]
        if kind == "tool_call":
            return [{"type": "tool_call", "tool_call": event.get("tool_call")}]
        if kind == "done":
            self.finished, self.result = True, event.get("result")
            return [{"type": "done", "result": self.result}]
        if kind == "failed":
            self.finished = self.failed = True
        return []
