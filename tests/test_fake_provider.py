"""The fake provider, exercised through the official openai and anthropic SDKs over real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from flexitasks.fake_provider import FakeProvider, FakeProviderAdmin, Fault

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there world"}]
A_MSGS = [{"role": "user", "content": "hello there world"}]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(name="primary") as provider:  # its answers start "primary: "
        yield provider


def _chat(client: openai.OpenAI, **kw: object) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(model="gpt-test", messages=MSGS, **kw)  # type: ignore[arg-type]


def _stream_chunks(client: openai.OpenAI) -> list[openai.types.chat.ChatCompletionChunk]:
    stream = client.chat.completions.create(
        model="gpt-test", messages=MSGS, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
    return list(stream)


# ---------------------------------------------------------------------------------------- happy paths


def test_openai_non_stream(oai: openai.OpenAI) -> None:
    r = _chat(oai)
    assert r.choices[0].message.content == "primary: hello there world"
    assert r.choices[0].finish_reason == "stop" and r.model == "gpt-test" and r.object == "chat.completion"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 4, 9)


def test_openai_stream_with_usage(oai: openai.OpenAI) -> None:
    chunks = _stream_chunks(oai)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 3 and "".join(content) == "primary: hello there world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].usage.prompt_tokens == 5
    assert all(c.usage is None for c in chunks[:-1])


def test_anthropic_non_stream(ant: anthropic.Anthropic) -> None:
    m = ant.messages.create(model="claude-test", max_tokens=100, system="be brief", messages=A_MSGS)  # type: ignore[arg-type]
    assert m.content[0].type == "text" and m.content[0].text == "primary: hello there world"
    assert m.stop_reason == "end_turn" and m.model == "claude-test"
    assert (m.usage.input_tokens, m.usage.output_tokens) == (5, 4)


def test_anthropic_stream_helper_and_raw_events(ant: anthropic.Anthropic) -> None:
    with ant.messages.stream(model="claude-test", max_tokens=100, messages=A_MSGS) as s:  # type: ignore[arg-type]
        texts = list(s.text_stream)
        final = s.get_final_message()
    assert len(texts) >= 3 and "".join(texts) == "primary: hello there world"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (3, 4)
    events = [e.type for e in ant.messages.create(
        model="claude-test", max_tokens=100, messages=A_MSGS, stream=True)]  # type: ignore[arg-type]
    assert events[:2] == ["message_start", "content_block_start"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert events.count("content_block_delta") >= 3


def test_max_tokens_cuts_the_answer(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    r = _chat(oai, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content == "primary: hello"
    m = ant.messages.create(model="c", max_tokens=2, messages=A_MSGS)  # type: ignore[arg-type]
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 2


def test_calls_are_fast_over_keep_alive(oai: openai.OpenAI) -> None:
    _chat(oai)
    t0 = time.perf_counter()
    for _ in range(20):
        _chat(oai)
    assert (time.perf_counter() - t0) / 20 < 0.02  # Nagle + delayed ACK would make each call ~40 ms


# ---------------------------------------------------------------------------------------- faults


def test_status_500_is_internal_server_error(fp: FakeProvider, oai: openai.OpenAI) -> None:
    fp.admin.set_fault(status=500)
    with pytest.raises(openai.InternalServerError) as ei:
        _chat(oai)
    assert ei.value.status_code == 500 and ei.value.type == "server_error"
    assert ei.value.response.headers.get("retry-after") is None


def test_429_with_retry_after(fp: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fp.admin.set_fault(status=429, retry_after=7)
    with pytest.raises(openai.RateLimitError) as ei:
        _chat(oai)
    assert ei.value.response.headers["retry-after"] == "7" and ei.value.code == "rate_limit_exceeded"
    fp.admin.set_fault(Fault(status=429, retry_after=1.5))
    with pytest.raises(anthropic.RateLimitError) as ai:
        ant.messages.create(model="c", max_tokens=10, messages=A_MSGS)  # type: ignore[arg-type]
    assert ai.value.response.headers["retry-after"] == "1.5" and ai.value.type == "rate_limit_error"


def test_anthropic_529_is_overloaded_error(fp: FakeProvider, ant: anthropic.Anthropic) -> None:
    assert issubclass(anthropic.OverloadedError, anthropic.InternalServerError)
    fp.admin.set_fault(status=529)
    with pytest.raises(anthropic.OverloadedError) as ei:
        ant.messages.create(model="c", max_tokens=10, messages=A_MSGS)  # type: ignore[arg-type]
    assert ei.value.status_code == 529 and ei.value.body == {
        "type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": ei.value.body["request_id"]}  # type: ignore[index]


def test_context_length_exceeded(fp: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fp.admin.set_fault(error_code="context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as ei:
        _chat(oai)
    assert ei.value.code == "context_length_exceeded" and ei.value.param == "messages"
    with pytest.raises(anthropic.BadRequestError) as ai:
        ant.messages.create(model="c", max_tokens=10, messages=A_MSGS)  # type: ignore[arg-type]
    assert ai.value.api_message == "prompt is too long: 250000 tokens > 200000 maximum"


def test_count_fails_exactly_n_then_recovers(fp: FakeProvider, oai: openai.OpenAI) -> None:
    fp.admin.set_fault(status=503, count=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            _chat(oai)
    assert _chat(oai).choices[0].message.content == "primary: hello there world"
    stats = fp.admin.stats()
    assert stats["by_status"] == {"503": 2, "200": 1} and stats["fault"] is None


def test_paths_restrict_the_fault(fp: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fp.admin.set_fault(status=500, paths=["/v1/messages"])
    assert _chat(oai).choices[0].finish_reason == "stop"
    with pytest.raises(anthropic.InternalServerError):
        ant.messages.create(model="c", max_tokens=10, messages=A_MSGS)  # type: ignore[arg-type]


def test_reset_is_a_connection_error(fp: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fp.admin.set_fault(mode="reset")
    with pytest.raises(openai.APIConnectionError) as ei:
        _chat(oai)
    assert not isinstance(ei.value, openai.APITimeoutError)
    with pytest.raises(anthropic.APIConnectionError):
        ant.messages.create(model="c", max_tokens=10, messages=A_MSGS)  # type: ignore[arg-type]


def test_hang_times_out_without_blocking_others(fp: FakeProvider, oai: openai.OpenAI) -> None:
    fp.admin.set_fault(mode="hang", count=1)
    hanging = openai.OpenAI(api_key="k", base_url=fp.openai_base_url, max_retries=0, timeout=0.5)
    caught: list[BaseException] = []

    def call() -> None:
        try:
            _chat(hanging)
        except BaseException as e:
            caught.append(e)

    t0 = time.perf_counter()
    worker = threading.Thread(target=call)
    worker.start()
    while fp.admin.stats()["requests"] < 1:
        time.sleep(0.01)
    assert _chat(oai).choices[0].finish_reason == "stop"  # answered while the other request hangs
    assert worker.is_alive()
    worker.join(5)
    assert len(caught) == 1 and isinstance(caught[0], openai.APITimeoutError)
    assert time.perf_counter() - t0 < 2
    assert [e["fault"] for e in fp.admin.requests()] == ["hang", None]
    assert [e["status"] for e in fp.admin.requests()] == [None, 200]


def test_truncated_stream_ends_without_finish_reason(fp: FakeProvider, oai: openai.OpenAI,
                                                     ant: anthropic.Anthropic) -> None:
    fp.admin.set_fault(mode="truncate")
    chunks = _stream_chunks(oai)  # ends cleanly: no exception, no [DONE]
    assert chunks and all(c.choices and c.choices[0].finish_reason is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text and "primary: hello there world".startswith(text) and text != "primary: hello there world"
    with ant.messages.stream(model="c", max_tokens=10, messages=A_MSGS) as s:  # type: ignore[arg-type]
        final = s.get_final_message()  # the SDK does not notice the missing message_stop
    assert final.stop_reason is None
    fp.admin.clear()
    assert _chat(oai).choices[0].finish_reason == "stop"  # the closed connection is not reused


def test_no_done_stream_is_complete(fp: FakeProvider, oai: openai.OpenAI) -> None:
    fp.admin.set_fault(mode="no_done")
    chunks = _stream_chunks(oai)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop" and chunks[-1].usage
    assert _chat(oai).choices[0].finish_reason == "stop"


def test_malformed_raises_json_decode_error(fp: FakeProvider, oai: openai.OpenAI) -> None:
    fp.admin.set_fault(mode="malformed")
    with pytest.raises(json.JSONDecodeError):
        _chat(oai)
    with pytest.raises(json.JSONDecodeError):
        _stream_chunks(oai)


def test_latency_and_stream_delays(fp: FakeProvider, oai: openai.OpenAI) -> None:
    fp.admin.set_fault(latency=0.2, count=1)
    t0 = time.perf_counter()
    _chat(oai)
    assert 0.2 <= time.perf_counter() - t0 < 1
    fp.admin.set_fault(first_token_delay=0.15, stall_after_chunks=2, stall_seconds=0.15)
    t0 = time.perf_counter()
    stream = oai.chat.completions.create(model="m", messages=MSGS, stream=True)  # type: ignore[arg-type]
    arrivals = [time.perf_counter() - t0 for _ in stream]
    # role chunk at once; first content after first_token_delay; a stall after 2 content chunks
    assert arrivals[0] < 0.1 and arrivals[1] >= 0.15 and arrivals[3] - arrivals[2] >= 0.14


def test_wrong_api_key_is_401() -> None:
    with FakeProvider(name="keyed", api_key="right-key") as fp:
        good = openai.OpenAI(api_key="right-key", base_url=fp.openai_base_url, max_retries=0)
        assert good.chat.completions.create(model="m", messages=MSGS).choices  # type: ignore[arg-type]
        bad = openai.OpenAI(api_key="wrong-key", base_url=fp.openai_base_url, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as ei:
            bad.chat.completions.create(model="m", messages=MSGS)  # type: ignore[arg-type]
        assert ei.value.code == "invalid_api_key" and "wrong-key" not in str(ei.value.body)
        ant = anthropic.Anthropic(api_key="wrong-key", base_url=fp.anthropic_base_url, max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as ai:
            ant.messages.create(model="c", max_tokens=10, messages=A_MSGS)  # type: ignore[arg-type]
        assert ai.value.type == "authentication_error"
        ok = anthropic.Anthropic(api_key="right-key", base_url=fp.anthropic_base_url, max_retries=0)
        assert ok.messages.create(model="c", max_tokens=10, messages=A_MSGS).content  # type: ignore[arg-type]
        log = json.dumps(fp.admin.requests()) + json.dumps(fp.admin.stats())
        assert "right-key" not in log and "wrong-key" not in log
        assert fp.admin.stats()["by_status"] == {"200": 2, "401": 2}


# ---------------------------------------------------------------------------------------- admin


def test_stats_and_log_count_every_request(fp: FakeProvider, oai: openai.OpenAI,
                                           ant: anthropic.Anthropic) -> None:
    _chat(oai)
    _stream_chunks(oai)
    ant.messages.create(model="claude-test", max_tokens=10, messages=A_MSGS)  # type: ignore[arg-type]
    fp.admin.set_fault(status=500, count=1)
    with pytest.raises(openai.InternalServerError):
        _chat(oai)
    stats = fp.admin.stats()
    assert stats["name"] == "primary" and stats["requests"] == 4
    assert stats["by_path"] == {"/v1/chat/completions": 3, "/v1/messages": 1}
    assert stats["by_status"] == {"200": 3, "500": 1} and stats["by_fault"] == {"status:500": 1}
    log = fp.admin.requests()
    assert [e["seq"] for e in log] == [1, 2, 3, 4]
    assert [e["stream"] for e in log] == [False, True, False, False]
    assert log[2]["model"] == "claude-test" and log[3]["fault"] == "status:500" and log[3]["status"] == 500
    assert all(log[i]["mono"] <= log[i + 1]["mono"] for i in range(3)) and log[0]["t"] > 1e9
    assert [e["seq"] for e in fp.admin.requests(since=3)] == [4]
    fp.admin.reset()
    assert fp.admin.stats()["requests"] == 0 and fp.admin.requests() == []


def test_bad_admin_input_is_400_and_server_survives(fp: FakeProvider, oai: openai.OpenAI) -> None:
    for body in (b"{not json", b'{"status": "abc"}', b'{"mode": "explode"}', b'{"bogus": 1}', b"[1]"):
        req = urllib.request.Request(fp.url + "/_admin/fault", data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(req, timeout=5)
        assert ei.value.code == 400 and json.loads(ei.value.read())["error"] == "invalid fault"
    with pytest.raises(ValueError):
        fp.admin.set_fault(status=200)  # validated locally by the Fault model
    with pytest.raises(ValueError):
        fp.admin.requests(since=-1)
    assert fp.admin.fault()["fault"] is None
    assert _chat(oai).choices[0].finish_reason == "stop"


def test_clear_keeps_counters(fp: FakeProvider, oai: openai.OpenAI) -> None:
    fp.admin.set_fault(status=500)
    with pytest.raises(openai.InternalServerError):
        _chat(oai)
    fp.admin.clear()
    assert _chat(oai).choices and fp.admin.stats()["requests"] == 2


def test_cli_serves_and_stops_on_sigterm() -> None:
    # Run server.py as a script: the same main(), without importing the (slow) flexitasks package.
    script = ROOT / "flexitasks" / "fake_provider" / "server.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "--port", "0", "--name", "cli", "--api-key-env", "FAKE_KEY"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "FAKE_KEY": "cli-key"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("fake provider cli listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        client = openai.OpenAI(api_key="cli-key", base_url=url + "/v1", max_retries=0, timeout=5)
        assert _chat(client).choices[0].message.content == "cli: hello there world"
        with FakeProviderAdmin(url) as admin:
            assert admin.stats()["requests"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]


def test_a_call_that_began_before_a_reset_is_not_counted_after_it(fake: FakeProvider, oai: openai.OpenAI) -> None:
    """A slow call of an earlier test that ends after the counters were zeroed must not add a
    status the new counters never saw arrive (the flood test compares them call for call)."""
    fake.admin.reset()
    fake.admin.set_fault(latency=1.0)
    slow = threading.Thread(target=_chat, args=(oai,))
    slow.start()
    deadline = time.monotonic() + 10
    while fake.admin.stats()["in_flight"] < 1:
        assert time.monotonic() < deadline, "the slow call never reached the fake"
        time.sleep(0.01)
    fake.admin.reset()  # zeroes the counters while that call is still being served
    slow.join(10)
    stats = fake.admin.stats()
    assert (stats["requests"], stats["by_status"], stats["by_fault"]) == (0, {}, {})
    _chat(oai)  # a call after the reset is counted as before
    stats = fake.admin.stats()
    assert (stats["requests"], stats["by_status"]) == (1, {"200": 1})
