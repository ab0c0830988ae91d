"""Streaming to the caller and asyncio producers.

- ``stream_chat(messages, *, timeout=None, **options)``: events as the provider writes
  them (``client.py``);
- ``await achat(...)`` and ``async for event in astream_chat(...)`` (``aio.py``);
- worker side: the per-task delta sink (``sink.py``) and the per-process writer
  (``writer.py``); the wire format is ``events.py``.

The three caller functions are exported by ``flexitasks`` itself; this package's
``__init__`` imports nothing, so the worker side loads none of the caller side.
"""
