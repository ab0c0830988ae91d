"""Server-sent events read straight off the response bytes, for the adapters' lean path.

Owns only the SSE framing (lines, ``event:``/``data:`` fields, the blank line that ends an
event); the adapters decode each event's data with one ``orjson.loads`` and own its meaning.
Building a typed SDK object per chunk costs about 4x the whole JSON decode (FACTS.md), so
this stays a few lines of bytes handling. Lines end with ``\\n`` or ``\\r\\n`` (what every
LLM API sends); a bare ``\\r`` is not taken as a line end. Knows nothing of HTTP or deadlines.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

Event = tuple[str, bytes]
"""(event name, data): the name is ``""`` when the event has no ``event:`` line
(OpenAI's chunks); multi-line data is joined with ``\\n`` as the SSE spec says."""


def events(chunks: Iterable[bytes], on_bytes: Callable[[], None] | None = None) -> Iterator[Event]:
    """The events in a stream of byte chunks, each yielded once its blank line arrived.

    ``on_bytes`` is called for every chunk received (the caller notes that the connection
    is alive). Comments (``:`` lines, keep-alives) and events without data are skipped; an
    event cut off by the end of the stream is dropped, as the spec says: its absence is
    what tells the caller the answer is incomplete.
    """
    buffer = b""
    name = ""
    data: list[bytes] = []
    for chunk in chunks:
        if on_bytes is not None:
            on_bytes()
        if not buffer and not data and chunk.startswith(b"data: ") and chunk.find(b"\n") == len(chunk) - 2 \
                and chunk.endswith(b"\n\n"):
            yield name, chunk[6:-2]  # the usual chunk: one whole event of one data line
            name = ""
            continue
        buffer += chunk
        if b"\n" not in chunk:
            continue
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if data:
                    yield name, data[0] if len(data) == 1 else b"\n".join(data)
                name, data = "", []
            elif line.startswith(b"data:"):
                data.append(line[6:] if line.startswith(b"data: ") else line[5:])
            elif line.startswith(b"event:"):
                name = line[6:].strip().decode("utf-8", "replace")
            # other fields (id:, retry:) and comments (":") carry nothing an adapter needs
