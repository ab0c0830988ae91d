"""Streaming and asyncio producers through the session's real worker pool and fake providers."""

from __future__ import annotations

import asyncio
import time

import pytest

from flexitasks import InvalidRequest, achat, stream_chat

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES = [{"role": "user", "content": "Tell me about streams in Redis please"}]


def test_a_streamed_answer_ends_with_the_tasks_result(clean):
    events = list(stream_chat(MESSAGES, timeout=30))
    done = events[-1]
    assert done["type"] == "done"
    assert done["result"]["provider"] == "primary"
    assert done["result"]["content"].startswith("primary: Tell me about streams")
    assert all(e["type"] != "done" for e in events[:-1])


def test_a_streamed_invalid_request_raises_what_get_raises(clean):
    with pytest.raises(InvalidRequest, match="temperature"):
        list(stream_chat(MESSAGES, temperature=9, timeout=30))


def test_achat_returns_the_result_and_raises_the_tasks_errors(clean):
    async def scenario():
        result = await achat(MESSAGES, timeout=30)
        with pytest.raises(InvalidRequest, match="role"):
            await achat([{"role": "robot", "content": "hi"}], timeout=30)
        return result

    result = asyncio.run(scenario())
    assert result["provider"] == "primary"
    assert result["content"].startswith("primary: Tell me about streams")


def test_a_thousand_concurrent_achats_in_one_loop(clean):
    """Every call answered, its own answer; the loop's worst stall is recorded (not asserted:
    a timing on a shared 2-core machine)."""
    n = 1000

    async def scenario():
        stalls = []
        running = True

        async def ticker():
            loop = asyncio.get_running_loop()
            while running:
                t = loop.time()
                await asyncio.sleep(0.005)
                stalls.append(loop.time() - t - 0.005)

        await achat(MESSAGES, timeout=60)  # warm: the app, the clients, the send thread
        tick = asyncio.ensure_future(ticker())
        msgs = [[{"role": "user", "content": f"question {i}"}] for i in range(n)]
        results = await asyncio.gather(*(achat(m, timeout=120) for m in msgs))
        running = False
        await tick
        return results, max(stalls)

    started = time.monotonic()
    results, worst = asyncio.run(scenario())
    print(f"\n1000 concurrent achat: {time.monotonic() - started:.1f}s, worst loop stall {worst * 1000:.1f} ms")
    assert [r["content"] for r in results] == [f"primary: question {i}" for i in range(n)]
