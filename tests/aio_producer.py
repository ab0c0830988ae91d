"""An asyncio producer in a process of its own: ``python tests/aio_producer.py [streams]``.

Test support for ``tests/test_e2e_aio_topologies.py``: ``achat`` and ``astream_chat`` use the
default app, whose settings are read once from ``FLEXITASKS_CONFIG``; the test process's own
default app is bound to the tests' single Redis, so a deployment on Sentinel or a Cluster is
driven from here. Prints one JSON object: what each call returned, or what the first raised.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from flexitasks import achat, astream_chat

MESSAGES = [{"role": "user", "content": "Tell me about streams in Redis please"}]
TIMEOUT = 90.0


async def stream(n: int) -> list[dict[str, Any]]:
    return [event async for event in astream_chat([{"role": "user", "content": f"question {n}"}], timeout=TIMEOUT)]


async def scenario(streams: int) -> dict[str, Any]:
    out: dict[str, Any] = {"achat": await achat(MESSAGES, timeout=TIMEOUT)}
    try:
        await achat([{"role": "robot", "content": "hi"}], timeout=TIMEOUT)
    except Exception as exc:  # the task's own error, through the result backend
        out["task_error"] = type(exc).__name__
    out["many"] = await asyncio.gather(*(achat([{"role": "user", "content": f"q{i}"}], timeout=TIMEOUT)
                                         for i in range(10)))
    out["streams"] = await asyncio.gather(*(stream(i) for i in range(streams)))
    return out


def main() -> None:
    streams = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    try:
        report = asyncio.run(scenario(streams))
    except Exception as exc:
        report = {"raised": type(exc).__name__, "message": str(exc), "chained": exc.__cause__ is not None
                  or (exc.__context__ is not None and not exc.__suppress_context__)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
