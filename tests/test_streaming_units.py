"""Streaming transport and sink against a real Redis (no worker): the wire format, the
per-process writer, the blocking reader, the delta sink and the asyncio result waiter."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest
import redis
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from conftest import KEY_PREFIX, REDIS_URL
from redis.backoff import NoBackoff
from redis.retry import Retry

from flexitasks.errors import InvalidRequest
from flexitasks.streaming.client import POLL, _follow, block_ms, read_entries, time_left
from flexitasks.streaming.events import DONE_TTL, LIVE_TTL, Replay, stream_key
from flexitasks.streaming.sink import DeltaSink
from flexitasks.streaming.writer import StreamWriter, merge_deltas


@pytest.fixture()
def writer(redis_client: redis.Redis) -> StreamWriter:
    return StreamWriter(redis.Redis.from_url(REDIS_URL))


def new_key() -> tuple[str, str]:
    task_id = str(uuid.uuid4())
    return task_id, stream_key(KEY_PREFIX, task_id)


def follow(task_id: str, key: str, timeout: float = 20.0):
    from flexitasks import app

    return _follow(AsyncResult(task_id, app=app), redis.Redis.from_url(REDIS_URL), key, time.monotonic() + timeout)


def test_replay_voids_an_attempt_that_ended_without_a_restart():
    replay = Replay()
    shown = replay.feed([
        {"type": "attempt", "provider": "a", "t": 1.0}, {"type": "delta", "text": "Hel"},
        {"type": "attempt", "provider": "b"}, {"type": "delta", "text": "Hello"},
        {"type": "done", "result": {"content": "Hello"}},
    ])
    assert shown == [
        {"type": "delta", "text": "Hel"},
        {"type": "restart", "provider": "a", "reason": "task restarted"},
        {"type": "delta", "text": "Hello"},
        {"type": "done", "result": {"content": "Hello"}},
    ]
    assert replay.finished and not replay.failed


def test_replay_shows_no_second_restart_after_the_workers_own():
    shown = Replay().feed([
        {"type": "attempt", "provider": "a"}, {"type": "delta", "text": "x"},
        {"type": "restart", "provider": "a", "reason": "truncated"},
        {"type": "attempt", "provider": "b"}, {"type": "delta", "text": "y"},
    ])
    assert [e["type"] for e in shown] == ["delta", "restart", "delta"]
    assert shown[1] == {"type": "restart", "provider": "a", "reason": "truncated"}


def test_consecutive_deltas_of_a_stream_merge_and_other_entries_keep_their_order():
    batch = [
        ("s1", {"type": "attempt", "provider": "a"}),
        ("s1", {"type": "delta", "text": "a"}),
        ("s2", {"type": "delta", "text": "x"}),
        ("s1", {"type": "delta", "text": "b"}),
        ("s1", {"type": "restart", "provider": "a", "reason": "r"}),
        ("s1", {"type": "delta", "text": "c"}),
    ]
    assert merge_deltas(batch) == [
        ("s1", {"type": "attempt", "provider": "a"}),
        ("s1", {"type": "delta", "text": "ab"}),
        ("s2", {"type": "delta", "text": "x"}),
        ("s1", {"type": "restart", "provider": "a", "reason": "r"}),
        ("s1", {"type": "delta", "text": "c"}),
    ]


def test_the_first_delta_reaches_the_reader_before_the_rest_is_written(writer):
    task_id, key = new_key()
    sink = DeltaSink(writer, key)
    on_delta = sink.attempt("primary")
    on_delta("Hel")
    events = follow(task_id, key)
    assert next(events) == {"type": "delta", "text": "Hel"}
    on_delta("lo")
    sink.finished({"content": "Hello"})
    rest = list(events)
    assert "".join(e["text"] for e in rest if e["type"] == "delta") == "lo"
    assert rest[-1] == {"type": "done", "result": {"content": "Hello"}}


def test_a_failed_attempt_that_sent_text_becomes_a_restart_and_one_that_did_not_is_silent(writer):
    task_id, key = new_key()
    sink = DeltaSink(writer, key)
    sink.attempt("primary")  # failed before any text: nothing to void
    sink.failed("primary", "unavailable 500")
    sink.attempt("primary")("primary: half")
    sink.failed("primary", "truncated: no finish_reason")
    sink.attempt("secondary")("secondary: whole answer")
    call = {"id": "call_1", "name": "lookup", "arguments": {"q": "x"}}
    sink.finished({"content": "secondary: whole answer", "tool_calls": [call]})
    assert list(follow(task_id, key)) == [
        {"type": "delta", "text": "primary: half"},
        {"type": "restart", "provider": "primary", "reason": "truncated: no finish_reason"},
        {"type": "delta", "text": "secondary: whole answer"},
        {"type": "tool_call", "tool_call": call},
        {"type": "done", "result": {"content": "secondary: whole answer", "tool_calls": [call]}},
    ]


def test_a_stream_expires_and_its_length_is_bounded(redis_client):
    writer = StreamWriter(redis.Redis.from_url(REDIS_URL), maxlen=10)
    _, key = new_key()
    for i in range(1000):
        writer.put(key, {"type": "attempt", "provider": str(i)})  # not merged: one entry each
    assert writer.flush()
    assert redis_client.xlen(key) < 300  # approximate trimming works in whole nodes of 100
    assert LIVE_TTL - 5 <= redis_client.ttl(key) <= LIVE_TTL
    writer.put(key, {"type": "failed"})
    assert writer.flush()
    assert 0 < redis_client.ttl(key) <= DONE_TTL


def test_a_writer_without_redis_drops_entries_and_never_raises():
    writer = StreamWriter(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2,
                                      retry=Retry(NoBackoff(), 1)))
    writer.put("k", {"type": "delta", "text": "x"})  # returns at once: the thread meets the error
    assert writer.flush(timeout=60)
    assert writer.dropped == 1


def test_the_failed_entry_raises_the_tasks_stored_error(writer):
    from flexitasks import app

    task_id, key = new_key()
    DeltaSink(writer, key).failed_for_good()
    events = follow(task_id, key)
    threading.Timer(0.2, app.backend.mark_as_failure, (task_id, InvalidRequest("invalid chat request: x"))).start()
    with pytest.raises(InvalidRequest, match="invalid chat request: x"):
        list(events)


def test_a_silent_stream_ends_with_the_stored_result(redis_client):
    from flexitasks import app

    task_id, key = new_key()
    app.backend.mark_as_done(task_id, {"content": "from the backend"})
    assert list(follow(task_id, key)) == [{"type": "done", "result": {"content": "from the backend"}}]


def test_the_asyncio_waiter_gets_results_stored_before_and_after_it_subscribed(redis_client):
    from flexitasks import app
    from flexitasks.streaming.aio import _clients

    before, after, failing = (str(uuid.uuid4()) for _ in range(3))
    app.backend.mark_as_done(before, {"n": 1})

    async def scenario():
        waiter = _clients().results
        later = asyncio.ensure_future(waiter.wait(after, timeout=20))
        broken = asyncio.ensure_future(waiter.wait(failing, timeout=20))
        await asyncio.sleep(0.2)
        app.backend.mark_as_done(after, {"n": 2})
        app.backend.mark_as_failure(failing, InvalidRequest("invalid chat request: y"))
        first = await waiter.wait(before, timeout=20)
        with pytest.raises(InvalidRequest, match="y"):
            await broken
        return first, await later

    assert asyncio.run(scenario()) == ({"n": 1}, {"n": 2})


def test_both_readers_block_at_most_a_poll_and_time_out_as_get_does() -> None:
    assert time_left(None, 5.0) is None and block_ms(None) == int(POLL * 1000)
    assert time_left(10.0, 9.75) == 0.25 and block_ms(0.25) == 250
    assert block_ms(0.0001) == 1  # BLOCK 0 would mean "forever"
    with pytest.raises(CeleryTimeoutError):
        time_left(10.0, 10.0)


def test_an_xread_reply_gives_its_entries_in_order_and_the_id_to_read_on_from() -> None:
    reply = [[b"k", [(b"1-0", {b"e": b'{"type":"delta","text":"a"}'}), (b"2-0", {b"e": b'{"type":"done"}'})]]]
    assert read_entries(reply, "0-0") == (b"2-0", [{"type": "delta", "text": "a"}, {"type": "done"}])
    assert read_entries([], "7-1") == ("7-1", [])
