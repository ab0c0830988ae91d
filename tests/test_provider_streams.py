"""The adapters' lean streaming path and the provider errors of issue 11 (items 1, 2, 3, 5),
in this process: the real adapters and official SDKs over HTTP to a fake provider (or, for
shapes the fake does not send, to a server replaying recorded SSE bytes). No worker needed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from conftest import log_records

from flexitasks.breaker.permit import OpenGate
from flexitasks.config import ProviderSettings, RetrySettings
from flexitasks.errors import RequestRejected
from flexitasks.failover.policy import Action, default_policy
from flexitasks.failover.router import Router
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.fake_provider import FakeProvider
from flexitasks.models import ChatRequest
from flexitasks.providers import build_adapter, sse
from flexitasks.providers.classify import classify

REQUEST = ChatRequest.parse(
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "one two three four five"}], {}
)
LIMITS = {"timeout": 10.0, "connect_timeout": 1.0, "first_token_timeout": 1.0, "stall_timeout": 1.0}


def adapter(fp: FakeProvider | str, kind: str = "openai", **extra: Any) -> Any:
    """The real adapter of ``kind`` for a fake provider, or for a server's base URL."""
    url = fp if isinstance(fp, str) else fp.anthropic_base_url if kind == "anthropic" else fp.openai_base_url
    return build_adapter(ProviderSettings(name=kind, kind=kind, model="m", base_url=url, **{**LIMITS, **extra}))


def failure_of(call: Any) -> ProviderFailure:
    with pytest.raises(ProviderFailure) as info:
        call()
    return info.value


KINDS = ["openai", "openai-compatible", "anthropic"]


# ------------------------------------------------------------------ SSE framing


def test_sse_events_are_framed_across_chunk_boundaries_and_line_endings() -> None:
    raw = (b": keep-alive\r\n\r\nevent: message_start\r\ndata: {\"a\": 1}\r\n\r\n"
           b"data: line one\ndata: line two\n\nid: 7\ndata: [DONE]\n\ndata: {\"cut\": ")
    chunks = [raw[i : i + 5] for i in range(0, len(raw), 5)]
    seen: list[int] = []
    got = list(sse.events(chunks, lambda: seen.append(1)))
    assert got == [("message_start", b'{"a": 1}'), ("", b"line one\nline two"), ("", b"[DONE]")]
    assert len(seen) == len(chunks)  # every chunk counted as the connection being alive



def test_sse_one_whole_event_per_chunk_reads_the_same_as_any_other_cut() -> None:
    """Providers send one event per chunk, read the short way: same events as the bytes cut anywhere."""
    chunks = [b"event: ping\n", b'data: {"a": 1}\n\n', b'data: {"b": 2}\n\n', b'data: {"c"', b': 3}\n\n',
              b"data: x\r\n\r\n", b"data: two\ndata: lines\n\n", b"data: [DONE]\n\n"]
    raw = b"".join(chunks)
    cut_anywhere = list(sse.events(raw[i : i + 3] for i in range(0, len(raw), 3)))
    assert list(sse.events(chunks)) == cut_anywhere == [
        ("ping", b'{"a": 1}'), ("", b'{"b": 2}'), ("", b'{"c": 3}'), ("", b"x"), ("", b"two\nlines"), ("", b"[DONE]")]

# ------------------------------------------------------------------ the lean path


@pytest.mark.parametrize("kind", KINDS)
def test_answer_text_pieces_usage_and_first_token(fp: FakeProvider, kind: str) -> None:
    pieces: list[str] = []
    done = adapter(fp, kind).complete(REQUEST, 10.0, pieces.append)
    assert done.content == "fake: one two three four five"
    assert pieces == ["fake: ", "one ", "two ", "three ", "four ", "five"]
    assert done.finish_reason in ("stop", "end_turn")
    assert (done.input_tokens, done.output_tokens) == (7, 6)
    assert done.first_token_s is not None and 0 < done.first_token_s < 10
    assert done.tool_calls == []


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("fault", "kind_of_failure"), [
    ({"mode": "truncate"}, "truncated"),
    ({"mode": "malformed"}, "truncated"),
    ({"mode": "reset"}, "unavailable"),
    ({"first_token_delay": 2.0}, "timeout"),
    ({"stall_after_chunks": 2, "stall_seconds": 2.0}, "timeout"),
    ({"status": 429, "retry_after": 3}, "rate_limited"),
])
def test_every_stream_fault_is_still_detected(fp: FakeProvider, kind: str, fault: dict, kind_of_failure: str) -> None:
    fp.admin.set_fault(**fault)
    failure = failure_of(lambda: adapter(fp, kind).complete(REQUEST, 10.0))
    assert failure.kind.value == kind_of_failure
    if "retry_after" in fault:  # the SDK's typed error still carries the headers
        assert failure.retry_after == 3 and failure.status == 429


@pytest.mark.parametrize("kind", KINDS)
def test_a_missing_end_marker_after_a_complete_answer_is_an_answer(fp: FakeProvider, kind: str) -> None:
    fp.admin.set_fault(mode="no_done")
    assert adapter(fp, kind).complete(REQUEST, 10.0).content == "fake: one two three four five"


# ------------------------------------------------------------------ tool calls (recorded SSE)


class _Replay(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    body = b""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def replay() -> Iterator[Any]:
    """A server answering every POST with the SSE bytes it is given."""
    handler = type("Handler", (_Replay,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def serve(events: list[str]) -> str:
        handler.body = "".join(events).encode()
        return f"http://127.0.0.1:{server.server_port}"

    yield serve
    server.shutdown()
    server.server_close()


def _oai(delta: dict[str, Any], finish: str | None = None) -> str:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(chunk)}\n\n"


def _ant(event: dict[str, Any]) -> str:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"


def test_openai_tool_call_pieces_are_joined_per_call(replay: Any) -> None:
    def call(i: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": i, **fields}]}

    url = replay([
        _oai({"role": "assistant", "content": None}),
        _oai(call(0, id="call_a", type="function", function={"name": "get_weather", "arguments": ""})),
        _oai(call(0, function={"arguments": '{"city": '})),
        _oai(call(1, id="call_b", type="function", function={"name": "get_time", "arguments": "{}"})),
        _oai(call(0, function={"arguments": '"Paris"}'})),
        _oai({}, "tool_calls"),
        "data: [DONE]\n\n",
    ])
    done = adapter(url + "/v1").complete(REQUEST, 10.0)
    assert done.finish_reason == "tool_calls"
    assert done.tool_calls == [
        {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"id": "call_b", "name": "get_time", "arguments": "{}"},
    ]
    assert done.first_token_s is not None


def test_anthropic_tool_use_blocks_are_joined_per_block(replay: Any) -> None:
    url = replay([
        _ant({"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 9}}}),
        _ant({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        _ant({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Checking."}}),
        _ant({"type": "content_block_stop", "index": 0}),
        _ant({"type": "content_block_start", "index": 1,
              "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}}),
        _ant({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        _ant({"type": "content_block_delta", "index": 1,
              "delta": {"type": "input_json_delta", "partial_json": '{"city": "Pa'}}),
        _ant({"type": "content_block_delta", "index": 1,
              "delta": {"type": "input_json_delta", "partial_json": 'ris"}'}}),
        _ant({"type": "content_block_stop", "index": 1}),
        _ant({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
        _ant({"type": "message_stop"}),
    ])
    done = adapter(url, "anthropic").complete(REQUEST, 10.0)
    assert (done.content, done.finish_reason, done.output_tokens) == ("Checking.", "tool_use", 12)
    assert done.tool_calls == [{"id": "toolu_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}]


def test_an_error_key_set_to_null_is_not_an_error(replay: Any) -> None:
    chunk = {"id": "c", "model": "m", "error": None, "choices": [{"index": 0, "delta": {"content": "hi"},
                                                                  "finish_reason": "stop"}]}
    done = adapter(replay([f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]) + "/v1").complete(REQUEST, 10.0)
    assert (done.content, done.finish_reason) == ("hi", "stop")


@pytest.mark.parametrize("body", ['data: {"choices": "nope"}\n\n', 'data: [1, 2]\n\n'])
def test_a_chunk_of_the_wrong_shape_is_a_malformed_stream(replay: Any, body: str) -> None:
    failure = failure_of(lambda: adapter(replay([body]) + "/v1").complete(REQUEST, 10.0))
    assert failure.kind is FailureKind.TRUNCATED


# ------------------------------------------------------------------ issue 11.1: in-band errors


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("error_type", "expected"), [
    ("overloaded_error", FailureKind.UNAVAILABLE),
    ("api_error", FailureKind.UNAVAILABLE),
    ("rate_limit_error", FailureKind.RATE_LIMITED),
])
def test_an_error_event_after_http_200_is_the_providers_failure(
    fp: FakeProvider, kind: str, error_type: str, expected: FailureKind
) -> None:
    fp.admin.set_fault(mode="error_event", error_code=error_type)
    failure = failure_of(lambda: adapter(fp, kind).complete(REQUEST, 10.0))
    assert failure.kind is expected
    assert error_type in failure.message


def _sdk_error(sdk: Any, status: int, body: dict[str, Any]) -> Any:
    response = httpx2.Response(status, json=body, request=httpx2.Request("POST", "http://fake/v1"))
    return sdk.APIStatusError("error", response=response, body=body)


@pytest.mark.parametrize(("exc", "expected"), [
    (_sdk_error(anthropic, 200, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
     FailureKind.UNAVAILABLE),
    (_sdk_error(anthropic, 200, {"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}}),
     FailureKind.RATE_LIMITED),
    (openai.APIError("error", httpx2.Request("POST", "http://fake/v1"),
                     body={"message": "Rate limit exceeded", "type": "rate_limit_error"}), FailureKind.RATE_LIMITED),
])
def test_the_sdks_own_in_band_errors_are_classified_by_type(exc: BaseException, expected: FailureKind) -> None:
    assert classify(exc).kind is expected


# ------------------------------------------------------------------ issue 11.2: billing and quota


@pytest.mark.parametrize(("exc", "expected"), [
    (_sdk_error(openai, 429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                                        "code": "insufficient_quota"}}), FailureKind.BILLING),
    (_sdk_error(openai, 400, {"error": {"message": "Billing hard limit has been reached",
                                        "code": "billing_hard_limit_reached"}}), FailureKind.BILLING),
    (_sdk_error(anthropic, 400, {"type": "error", "error": {"type": "invalid_request_error", "message":
     "Your credit balance is too low to access the Anthropic API."}}), FailureKind.BILLING),
    (_sdk_error(openai, 402, {"error": {"message": "Payment required"}}), FailureKind.BILLING),
    (_sdk_error(openai, 429, {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}),
     FailureKind.RATE_LIMITED),
])
def test_billing_and_quota_errors_are_their_own_kind(exc: BaseException, expected: FailureKind) -> None:
    failure = classify(exc)
    assert failure.kind is expected
    if expected is FailureKind.BILLING:
        assert not failure.kind.blames_provider
        assert failure.kind.needs_operator
        assert default_policy(RetrySettings()).decide(failure, 0).action is Action.NEXT_PROVIDER


def test_billing_fails_over_at_once_logged_at_error_never_rejecting_the_request(fp: FakeProvider) -> None:
    with FakeProvider(name="backup") as backup:
        settings = [
            ProviderSettings(name="broke", kind="anthropic", model="m", base_url=fp.anthropic_base_url, priority=1),
            ProviderSettings(name="backup", kind="openai", model="m", base_url=backup.openai_base_url, priority=2),
        ]
        router = Router(settings, {p.name: build_adapter(p) for p in settings}, OpenGate(),
                        default_policy(RetrySettings(same_provider_backoff=0.01)), request_timeout=20.0)
        fp.admin.set_fault(status=400, error_code="credit_balance_too_low")
        with log_records("flexitasks.failover.router") as records:
            result = router.run(REQUEST)
    assert result.provider == "backup"
    assert [(a.provider, a.outcome) for a in result.attempts] == [("broke", "error"), ("backup", "ok")]
    assert result.attempts[0].error.startswith("billing 400: Your credit balance is too low")
    assert fp.admin.stats()["requests"] == 1  # no same-provider retry
    assert [r.levelname for r in records if "broke" in r.getMessage()] == ["ERROR"]


def test_a_billing_error_alone_is_not_a_rejected_request(fp: FakeProvider) -> None:
    settings = [ProviderSettings(name="broke", kind="openai", model="m", base_url=fp.openai_base_url)]
    router = Router(settings, {"broke": build_adapter(settings[0])}, OpenGate(),
                    default_policy(RetrySettings()), request_timeout=5.0)
    fp.admin.set_fault(status=429, error_code="insufficient_quota")
    with pytest.raises(Exception) as info:
        router.run(REQUEST)
    assert not isinstance(info.value, RequestRejected)
    assert "billing 429" in str(info.value)
    assert fp.admin.stats()["requests"] == 1


# ------------------------------------------------------------------ issue 11.3: parameters


def test_openai_kind_sends_max_completion_tokens(fp: FakeProvider) -> None:
    fp.admin.set_fault(reject_params=["max_tokens"])  # as newer OpenAI models do
    assert adapter(fp, "openai").complete(REQUEST, 10.0).content.startswith("fake:")


def test_openai_compatible_kind_keeps_max_tokens(fp: FakeProvider) -> None:
    fp.admin.set_fault(reject_params=["max_completion_tokens"])  # a server that knows only max_tokens
    assert adapter(fp, "openai-compatible").complete(REQUEST, 10.0).content.startswith("fake:")


def test_stream_options_can_be_switched_off_per_provider(fp: FakeProvider) -> None:
    fp.admin.set_fault(reject_params=["stream_options"])
    assert failure_of(lambda: adapter(fp, "openai-compatible").complete(REQUEST, 10.0)).kind is FailureKind.BAD_REQUEST
    done = adapter(fp, "openai-compatible", stream_options=False).complete(REQUEST, 10.0)
    assert done.content == "fake: one two three four five"
    assert done.output_tokens == 0  # no usage without stream_options: the price of turning it off


# ------------------------------------------------------------------ issue 11.5: silence, then a drop


@pytest.mark.parametrize("kind", KINDS)
def test_silence_then_a_dropped_connection_is_a_timeout(fp: FakeProvider, kind: str) -> None:
    fp.admin.set_fault(latency=0.7, mode="reset")  # more than first_token_timeout / 2 (0.5 s)
    failure = failure_of(lambda: adapter(fp, kind).complete(REQUEST, 10.0))
    assert failure.kind is FailureKind.TIMEOUT


@pytest.mark.parametrize("kind", KINDS)
def test_a_prompt_dropped_connection_stays_retryable(fp: FakeProvider, kind: str) -> None:
    fp.admin.set_fault(latency=0.1, mode="reset")
    assert failure_of(lambda: adapter(fp, kind).complete(REQUEST, 10.0)).kind is FailureKind.UNAVAILABLE
