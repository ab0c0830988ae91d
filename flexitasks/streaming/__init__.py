"""Streaming to the caller and asyncio producers.

- ``stream_chat(messages, *, timeout=None, **options)``: events as the provider writes
  them (``client.py``);
- ``await achat(...)`` and ``async for event in astream_chat(...)`` (``aio.py``);
- worker side: the per-task delta sink (``sink.py``) and the per-process writer
  (``writer.py``); the wire format is ``events.py``.

Importing this package loads no Celery app and opens no connection.
"""

from __future__ import annotations

from typing import Any

__all__ = ["achat", "astream_chat", "stream_chat"]


def __getattr__(name: str) -> Any:
    if name == "stream_chat":
        from flexitasks.streaming.client import stream_chat

        return stream_chat
    if name in ("achat", "astream_chat"):
        from flexitasks.streaming import aio

        return getattr(aio, name)
    raise AttributeError(f"module 'flexitasks.streaming' has no attribute {name!r}")
