"""A fake LLM provider: one HTTP server speaking the OpenAI and Anthropic wire formats.

This module owns the fake provider used by tests, the demo and the benchmarks: the handler
for ``POST /v1/chat/completions`` (OpenAI) and ``POST /v1/messages`` (Anthropic), JSON and
SSE streaming byte-compatible with the official SDKs; the ``Fault`` model, set over
``/_admin/*``, that reproduces real provider failures (error statuses, latency, stalls,
hangs, resets, malformed or truncated streams); the request counters and log;
``FakeProvider`` (background thread) and ``serve``/``main`` (blocking CLI). Answers are
deterministic echoes prefixed with the provider name, so a test can tell who answered.
API keys are compared, never logged or echoed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hmac
import json
import os
import random
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import parse_qs, urlsplit

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flexitasks.fake_provider import answers

if TYPE_CHECKING:
    from .admin import FakeProviderAdmin

OPENAI_PATH, ANTHROPIC_PATH = "/v1/chat/completions", "/v1/messages"
CHAT_PATHS = (OPENAI_PATH, ANTHROPIC_PATH)
MAX_WAIT = 300.0  # longest sleep or hang, in seconds
LOG_MAX, BODY_MAX, ECHO_MAX = 100_000, 32 * 1024 * 1024, 200


class Fault(BaseModel):
    """What to break, set over ``POST /_admin/fault``; all optional, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid")

    status: int | None = Field(None, ge=400, le=599)
    error_code: str | None = None
    retry_after: float | None = Field(None, ge=0)
    latency: float = Field(0.0, ge=0, le=MAX_WAIT)
    first_token_delay: float = Field(0.0, ge=0, le=MAX_WAIT)
    stall_after_chunks: int | None = Field(None, ge=0)
    stall_seconds: float = Field(0.0, ge=0, le=MAX_WAIT)
    mode: Literal["normal", "hang", "reset", "malformed", "truncate", "no_done", "bad_json", "error_event"] = "normal"
    """``error_event``: HTTP 200, then halfway through the answer an in-band error (Anthropic's
    ``event: error``, an OpenAI-compatible ``data: {"error": ...}``) of type ``error_code``
    (default ``overloaded_error``), and the stream ends."""
    count: int | None = Field(None, ge=1)
    paths: list[Literal["/v1/chat/completions", "/v1/messages"]] | None = None
    message: str | None = Field(None, max_length=2000)
    """The error's message text instead of the default (e.g. a provider echoing a key)."""
    chance: float = Field(1.0, gt=0, le=1)
    """Probability that a request gets this fault, the others answered normally (random faults
    for floods; ``count`` is then not used)."""
    mix: list[Fault] | None = None
    """Random faults: each request takes the first entry whose ``chance`` it draws (cumulative,
    in order; their sum at most 1), else is answered normally. The other fields are then unused."""
    reject_params: list[str] | None = None
    """Body keys answered with 400 "Unsupported parameter", as newer models do for ``max_tokens``
    and some compatible servers for ``stream_options``."""

    def effective_status(self) -> int | None:
        """An ``error_code`` without a status means 400, as both APIs send for those codes
        (except an in-band error event, which follows HTTP 200)."""
        if self.status is not None or self.mode == "error_event":
            return self.status
        return 400 if self.error_code else None

    def label(self) -> str:
        """Name in the request log: a mode ("hang"), ``"status:429"``, or ``"delay"`` for timing only."""
        status = self.effective_status()
        if self.mode in ("hang", "reset") or status is None:
            return self.mode if self.mode != "normal" else "delay"
        return f"status:{status}"


class _State:
    """Fault, counters and request log shared by all handler threads; one lock guards all."""

    def __init__(self, name: str, api_key: str | None) -> None:
        self.name, self.api_key, self.lock = name, api_key, threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Zero the counters and the log. A request that arrived before the reset and ends after
        it (a slow call of an earlier test) is not counted in them: its entry is of an older epoch."""
        with self.lock:
            self.epoch: int = getattr(self, "epoch", 0) + 1
            self.fault: Fault | None = None
            self.remaining: int | None = None
            self.seq = 0
            self.by_path: Counter[str] = Counter()
            self.by_status: Counter[str] = Counter()
            self.by_fault: Counter[str] = Counter()
            self.log: deque[dict[str, Any]] = deque(maxlen=LOG_MAX)
            self.in_flight: int = getattr(self, "in_flight", 0)  # chat requests being served now (kept)
            self.max_in_flight = self.in_flight  # the most at once since the reset

    def set_fault(self, fault: Fault | None) -> None:
        with self.lock:
            self.fault, self.remaining = fault, (fault.count if fault else None)

    def record(self, path: str, model: Any, stream: bool, images: list[dict[str, Any]] | None = None,
               ) -> dict[str, Any]:
        with self.lock:
            self.seq += 1
            self.by_path[path] += 1
            entry = {"seq": self.seq, "epoch": self.epoch, "t": time.time(), "mono": time.monotonic(), "path": path,
                     "model": model if isinstance(model, str) else None, "stream": stream,
                     "fault": None, "status": None, "images": images or []}
            self.log.append(entry)
            return entry

    def take_fault(self, path: str, entry: dict[str, Any]) -> Fault | None:
        """Consume one use of the fault if it applies to ``path`` ("fail the next N")."""
        with self.lock:
            fault = self.fault
            if fault is None or (fault.paths is not None and path not in fault.paths):
                return None
            if fault.mix is not None or fault.chance < 1:
                fault = _draw(fault)
                if fault is None:
                    return None
            elif self.remaining is not None:
                self.remaining -= 1
                if self.remaining <= 0:
                    self.fault = self.remaining = None
            entry["fault"] = fault.label()
            if entry["epoch"] == self.epoch:
                self.by_fault[entry["fault"]] += 1
            return fault

    def finish(self, entry: dict[str, Any], status: int) -> None:
        with self.lock:
            entry["status"] = status
            if entry["epoch"] == self.epoch:
                self.by_status[str(status)] += 1

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"name": self.name, "requests": self.seq, "by_path": dict(self.by_path),
                    "by_status": dict(self.by_status), "by_fault": dict(self.by_fault),
                    "fault": self.fault.model_dump() if self.fault else None, "remaining": self.remaining,
                    "in_flight": self.in_flight, "max_in_flight": self.max_in_flight}

    def enter(self, delta: int) -> None:
        """A chat request starts (+1) or ends (-1): tells how many calls overlap."""
        with self.lock:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def requests(self, since: int) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(e) for e in self.log if e["seq"] > since]


def _draw(fault: Fault) -> Fault | None:
    """One random draw: ``fault`` itself with probability ``chance``, or an entry of ``mix``."""
    r = random.random()
    for option in fault.mix if fault.mix is not None else [fault]:
        if r < option.chance:
            return option
        r -= option.chance
    return None


def _rid(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _text(content: Any) -> str:
    """Text of a ``content``: a string or a list of ``{"type": "text", "text": ...}`` blocks."""
    if isinstance(content, list):
        return " ".join(b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str))
    return content if isinstance(content, str) else ""


class _Answer:
    """The deterministic reply to one request, shared by both wire formats."""

    def __init__(self, name: str, body: dict[str, Any], openai: bool = True, bad_json: bool = False) -> None:
        msgs = [m for m in body["messages"] if isinstance(m, dict)]
        users = [m for m in msgs if m.get("role") == "user"]
        echo = _text(users[-1].get("content"))[:ECHO_MAX] if users else ""
        words = f"{name}: {echo or '(empty)'}".split()
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        self.truncated = isinstance(limit, int) and 0 < limit < len(words)
        self.content = " ".join(words[:limit] if self.truncated else words)
        reply = answers.reply(body, openai, echo, bad_json)  # tool calls or JSON, when asked for
        self.calls = reply.calls
        if reply.json_text is not None or reply.calls:
            self.content, self.truncated = reply.json_text or "", False
        texts = [_text(body.get("system")), *(_text(m.get("content")) for m in msgs)]
        self.input_tokens = sum(len(t.split()) for t in texts)
        self.output_tokens = max(1, len(self.content.split()) + sum(len(c.arguments.split()) for c in self.calls))
        self.model, self.created = body.get("model"), int(time.time())

    def finish(self, openai: bool) -> str:
        if self.calls:
            return "tool_calls" if openai else "tool_use"
        if self.truncated:
            return "length" if openai else "max_tokens"
        return "stop" if openai else "end_turn"

    def pieces(self) -> list[str]:
        """Content split per word, at least 3 pieces, so streams carry several deltas."""
        if not self.content:
            return []
        parts = re.findall(r"\S+\s*", self.content)
        if len(parts) < 3:
            n = max(1, len(self.content) // 3)
            parts = [self.content[:n], self.content[n : 2 * n], self.content[2 * n :]]
        return parts


def _openai_error(status: int, code: str | None, model: Any) -> dict[str, Any]:
    kind, param, msg = "invalid_request_error", None, f"Invalid request: {code or 'bad body'}"
    if code == "context_length_exceeded":
        param = "messages"
        msg = ("This model's maximum context length is 128000 tokens. However, your messages resulted in "
               "250000 tokens. Please reduce the length of the messages.")
    elif code == "content_policy_violation":
        msg = "Your request was rejected as a result of our safety system."
    elif status == 401:
        msg, code = "Incorrect API key provided", code or "invalid_api_key"
    elif status == 403:
        msg = "You are not allowed to sample from this model"
    elif status == 404:
        msg = f"The model `{model}` does not exist or you do not have access to it."
        code = code or "model_not_found"
    elif code == "insufficient_quota":
        msg, kind = "You exceeded your current quota, please check your plan and billing details.", code
    elif code == "unsupported_parameter":
        msg = "Unsupported parameter: this model does not support it."
    elif status == 429:
        msg, kind = "Rate limit reached for requests. Please try again later.", "requests"
        code = code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
        msg = ("The engine is currently overloaded, please try again later" if status in (502, 503, 529)
               else "The server had an error while processing your request. Sorry about that!")
    return {"error": {"message": msg, "type": kind, "param": param, "code": code}}


_ANTHROPIC_ERRORS = {  # status -> (error.type, message)
    400: ("invalid_request_error", "Invalid request"), 401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "There is an issue with your billing or payment information."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "model not found"), 413: ("request_too_large", "Request exceeds maximum size"),
    429: ("rate_limit_error", "Number of requests has exceeded your rate limit."),
    500: ("api_error", "Internal server error"), 504: ("timeout_error", "Request timed out"),
    529: ("overloaded_error", "Overloaded")}


_IN_BAND_MESSAGES = {"overloaded_error": "Overloaded", "api_error": "Internal server error",
                     "rate_limit_error": "Rate limit exceeded", "server_error": "The server had an error"}


def _anthropic_error(status: int, code: str | None) -> dict[str, Any]:
    kind, msg = _ANTHROPIC_ERRORS.get(status) or _ANTHROPIC_ERRORS[500 if status >= 500 else 400]
    if code == "context_length_exceeded":
        msg = "prompt is too long: 250000 tokens > 200000 maximum"
    elif code == "credit_balance_too_low":
        msg = ("Your credit balance is too low to access the Anthropic API. "
               "Please go to Plans & Billing to upgrade or purchase credits.")
    elif code:
        msg = "Output blocked by content filtering policy" if "policy" in code else code
    return {"type": "error", "error": {"type": kind, "message": msg}, "request_id": _rid("req_")}


class _Handler(BaseHTTPRequestHandler):
    """One client connection, kept alive; Nagle off, else Nagle + delayed ACK cost ~40 ms a call."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version, sys_version = "fake-provider/1.0", ""
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def handle(self) -> None:
        with contextlib.suppress(ConnectionError):  # a client dropped its socket (timeout, GC'd pool)
            super().handle()

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: benchmarks make thousands of calls, and headers must never reach a log."""

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None, mode: str = "") -> None:
        """Send JSON with Content-Length. "malformed": a complete body that is not JSON;
        "truncate": announce the full length, send half, drop the connection."""
        data = json.dumps(obj).encode()
        data = data[:-10] if mode == "malformed" else data
        self.send_response(status)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if mode == "truncate" else data)
        self.close_connection = self.close_connection or mode == "truncate"

    def _wait(self, seconds: float) -> bool:
        """Sleep, waking early if the server stops; True means abandon the request."""
        stop = seconds > 0 and self.server.stopping.wait(seconds)
        self.close_connection = self.close_connection or stop
        return stop

    def _dispatch(self) -> None:
        method, url, state = self.command, urlsplit(self.path), self.server.state
        route = (method, url.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 <= length <= BODY_MAX:
                raise ValueError
        except ValueError:
            self.close_connection = True
            return self._json(400, {"error": "invalid Content-Length"})
        raw = self.rfile.read(length) if length else b""
        if method == "POST" and url.path in CHAT_PATHS:
            state.enter(1)
            try:
                self._chat(url.path, raw)
            finally:
                state.enter(-1)
        elif route == ("POST", "/_admin/fault"):
            try:
                fault = Fault.model_validate_json(raw or b"{}")
            except ValidationError as e:
                detail = json.loads(e.json(include_url=False, include_input=False))
                return self._json(400, {"error": "invalid fault", "detail": detail})
            state.set_fault(fault)
            self._json(200, {"ok": True, "fault": fault.model_dump()})
        elif route == ("DELETE", "/_admin/fault"):
            state.set_fault(None)
            self._json(200, {"ok": True, "fault": None})
        elif route == ("POST", "/_admin/reset"):
            state.reset()
            self._json(200, {"ok": True})
        elif method == "GET" and url.path in ("/_admin/stats", "/_admin/fault", "/_admin/health"):
            self._json(200, {"ok": True, **state.stats()})
        elif route == ("GET", "/_admin/requests"):
            since = parse_qs(url.query).get("since", ["0"])[0]
            if not since.isdigit():
                return self._json(400, {"error": "'since' must be a non-negative integer"})
            self._json(200, {"name": state.name, "requests": state.requests(int(since))})
        else:
            self._json(404, {"error": f"no such endpoint: {method} {url.path}"})
        return None

    do_GET = do_POST = do_DELETE = _dispatch

    def _chat(self, path: str, raw: bytes) -> None:
        state, openai = self.server.state, path == OPENAI_PATH
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        body_ok, body = isinstance(body, dict), body if isinstance(body, dict) else {}
        entry = state.record(path, body.get("model"), body.get("stream") is True, answers.images(body, openai))
        fault: Fault | None = None

        def error(status: int, code: str | None = None, headers: dict[str, str] | None = None) -> None:
            obj = _openai_error(status, code, body.get("model")) if openai else _anthropic_error(status, code)
            if fault is not None and fault.message is not None:
                obj["error"]["message"] = fault.message
            rid = {"x-request-id" if openai else "request-id": _rid("req_")}
            self._json(status, obj, {**rid, **(headers or {})})
            state.finish(entry, status)

        if state.api_key is not None:
            auth = self.headers.get("Authorization", "")
            sent = (None if openai else self.headers.get("x-api-key")) or auth.removeprefix("Bearer ")
            if not hmac.compare_digest(sent.encode(), state.api_key.encode()):
                return error(401)
        msgs = body.get("messages")
        if not (body_ok and isinstance(body.get("model"), str) and isinstance(msgs, list) and msgs) or (
                not openai and not isinstance(body.get("max_tokens"), int)):
            return error(400)

        fault = state.take_fault(path, entry)
        if fault is not None:
            if self._wait(fault.latency):
                return None
            if fault.mode == "reset":
                return self._reset()
            if fault.mode == "hang":
                return self._hang()
            rejected = [k for k in fault.reject_params or () if k in body]
            if rejected:
                return error(400, "unsupported_parameter")
            if (status := fault.effective_status()) is not None:
                ra = fault.retry_after
                headers = {} if ra is None else {"Retry-After": str(int(ra)) if ra == int(ra) else str(ra)}
                return error(status, fault.error_code, headers)
        mode = fault.mode if fault else "normal"
        answer = _Answer(state.name, body, openai, bad_json=mode == "bad_json")
        state.finish(entry, 200)  # before the body: the client may drop a stream midway
        if body.get("stream") is True:
            self._stream(openai, answer, body, fault)
        else:
            self._json(200, self._complete(openai, answer), mode=mode)
        return None

    @staticmethod
    def _complete(openai: bool, a: _Answer) -> dict[str, Any]:
        if openai:
            message: dict[str, Any] = {"role": "assistant", "content": a.content or None, "refusal": None}
            if a.calls:
                message["tool_calls"] = [{"id": c.id, "type": "function",
                                          "function": {"name": c.name, "arguments": c.arguments}} for c in a.calls]
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": a.finish(openai)}
            return {"id": _rid("chatcmpl-"), "object": "chat.completion", "created": a.created,
                    "model": a.model, "system_fingerprint": None, "choices": [choice],
                    "usage": {"prompt_tokens": a.input_tokens, "completion_tokens": a.output_tokens,
                              "total_tokens": a.input_tokens + a.output_tokens}}
        blocks: list[dict[str, Any]] = [{"type": "text", "text": a.content}] if a.content else []
        blocks += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in a.calls]
        return {"id": _rid("msg_"), "type": "message", "role": "assistant", "model": a.model,
                "content": blocks, "stop_sequence": None, "stop_reason": a.finish(openai),
                "usage": {"input_tokens": a.input_tokens, "output_tokens": a.output_tokens}}

    def _stream(self, openai: bool, a: _Answer, body: dict[str, Any], fault: Fault | None) -> None:
        """SSE over chunked encoding (keeps the connection reusable). When a fault times or
        breaks the stream, one write per event as it is produced; otherwise the same bytes in
        one write, as a buffered server sends a burst: a write per event made a streamed call
        cost the fake 0.3 ms more CPU than a non-streamed one, on the cores benchmarks share."""
        mode = fault.mode if fault else "normal"
        paced = fault is not None and (fault.first_token_delay > 0 or fault.stall_after_chunks is not None
                                       or mode != "normal")
        held: list[bytes] = []
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        if mode in ("truncate", "no_done", "error_event"):  # else the client may reuse a socket we are about to close
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

        def send(data: bytes) -> None:
            framed = b"%x\r\n%s\r\n" % (len(data), data)
            if paced:
                self.wfile.write(framed)
            else:
                held.append(framed)

        def event(obj: dict[str, Any]) -> None:
            send(b"event: %s\ndata: %s\n\n" % (obj["type"].encode(), orjson.dumps(obj)))

        rid = _rid("chatcmpl-" if openai else "msg_")
        usage = {"prompt_tokens": a.input_tokens, "completion_tokens": a.output_tokens,
                 "total_tokens": a.input_tokens + a.output_tokens}
        with_usage = openai and bool((body.get("stream_options") or {}).get("include_usage"))

        def chunk(delta: dict[str, Any], finish: str | None = None, last: bool = False) -> None:
            obj: dict[str, Any] = {"id": rid, "object": "chat.completion.chunk", "created": a.created,
                                   "model": a.model, "system_fingerprint": None, "choices": [] if last else
                                   [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if with_usage:
                obj["usage"] = usage if last else None
            send(b"data: %s\n\n" % orjson.dumps(obj))  # compact, as the APIs send it

        if openai:
            chunk({"role": "assistant", "content": ""})
        else:
            event({"type": "message_start", "message": {
                "id": rid, "type": "message", "role": "assistant", "model": a.model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": {"input_tokens": a.input_tokens, "output_tokens": 1}}})
            if a.content:
                event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            event({"type": "ping"})
        if fault and self._wait(fault.first_token_delay):
            return None
        steps = self._steps(openai, a, chunk, event)
        cut = max(1, len(steps) // 2)
        for i, step in enumerate(steps):
            if fault and fault.stall_after_chunks == i and self._wait(fault.stall_seconds):
                return None
            if mode == "truncate" and i == cut:
                return self._end_stream()  # a clean end of body, but no finish_reason / message_stop
            if mode == "error_event" and i == cut:
                return self._error_event(openai, fault.error_code if fault else None, fault.message if fault else None)
            if mode == "malformed" and i == cut:
                send(b'data: {"id": "broken", "choices": [{"delta": {"content": \n\n' if openai else
                     b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, \n\n')
            step()
        if openai:
            chunk({}, a.finish(openai))
            if with_usage:
                chunk({}, last=True)
            if mode != "no_done":
                send(b"data: [DONE]\n\n")
        else:
            if a.content and not a.calls:
                event({"type": "content_block_stop", "index": 0})
            event({"type": "message_delta", "usage": {"output_tokens": a.output_tokens},
                   "delta": {"stop_reason": a.finish(openai), "stop_sequence": None}})
            if mode != "no_done":
                event({"type": "message_stop"})
        if held:
            held.append(b"0\r\n\r\n")  # the end of the chunked body
            self.wfile.write(b"".join(held))
            return None
        return self._end_stream()

    @staticmethod
    def _steps(openai: bool, a: _Answer, chunk: Callable[..., None], event: Callable[[dict[str, Any]], None],
               ) -> list[Callable[[], None]]:
        """The stream's output events in order (text deltas, then each tool call's start and
        argument pieces), so fault modes that act at event *i* work for every answer."""
        steps: list[Callable[[], None]] = []
        for piece in a.pieces():
            if openai:
                steps.append(functools.partial(chunk, {"content": piece}))
            else:
                delta = {"type": "text_delta", "text": piece}
                steps.append(functools.partial(event, {"type": "content_block_delta", "index": 0, "delta": delta}))
        first = 1 if a.content else 0
        for n, call in enumerate(a.calls):
            text = call.arguments
            third = max(1, len(text) // 3)
            parts = [p for p in (text[:third], text[third : 2 * third], text[2 * third :]) if p]
            if openai:
                start = {"index": n, "id": call.id, "type": "function",
                         "function": {"name": call.name, "arguments": ""}}
                steps.append(functools.partial(chunk, {"tool_calls": [start]}))
                steps += [functools.partial(chunk, {"tool_calls": [{"index": n, "function": {"arguments": p}}]})
                          for p in parts]
                continue
            index = first + n
            if n == 0 and first:
                steps.append(functools.partial(event, {"type": "content_block_stop", "index": 0}))
            block = {"type": "tool_use", "id": call.id, "name": call.name, "input": {}}
            steps.append(functools.partial(event, {"type": "content_block_start", "index": index,
                                                   "content_block": block}))
            steps += [functools.partial(event, {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "input_json_delta", "partial_json": p}})
                      for p in parts]
            steps.append(functools.partial(event, {"type": "content_block_stop", "index": index}))
        return steps

    def _error_event(self, openai: bool, code: str | None, text: str | None) -> None:
        """An error inside a stream already answered with 200, then the end of the body."""
        kind = code or "overloaded_error"
        message = text or _IN_BAND_MESSAGES.get(kind, kind)
        if openai:  # OpenAI-compatible servers (vLLM, OpenRouter, ...) send a bare error object
            data = json.dumps({"error": {"message": message, "type": kind, "code": kind}})
            text = f"data: {data}\n\n"
        else:
            data = json.dumps({"type": "error", "error": {"type": kind, "message": message}})
            text = f"event: error\ndata: {data}\n\n"
        raw = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
        self._end_stream()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _reset(self) -> None:
        """Close with SO_LINGER 0 so the kernel sends RST: the client sees 'connection reset'."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # drop the makefile reference, else close() would be deferred
        self.connection.close()
        self.close_connection = True

    def _hang(self) -> None:
        """Never answer; return once the client closes, the server stops, or after MAX_WAIT."""
        sock, deadline = self.connection, time.monotonic() + MAX_WAIT
        sock.settimeout(0.2)
        while not self.server.stopping.is_set() and time.monotonic() < deadline:
            try:
                if not sock.recv(1, socket.MSG_PEEK):
                    break  # orderly close: the client's timeout fired
                self.server.stopping.wait(0.2)  # pipelined bytes: keep hanging, without spinning
            except TimeoutError:
                continue
            except OSError:
                break
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    """Threaded server that stops promptly even with idle keep-alive or hanging connections."""

    daemon_threads = True
    block_on_close = False  # else server_close() waits for every idle keep-alive client
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], state: _State) -> None:
        self.state, self.stopping = state, threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(): a reverse DNS lookup that can stall offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def track(self, conn: socket.socket, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def stop(self) -> None:
        self.stopping.set()
        self.shutdown()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:  # wake handler threads blocked reading idle keep-alive connections
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.server_close()


class FakeProvider:
    """A fake provider served from a background thread; a context manager for tests."""

    def __init__(self, name: str = "primary", host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None) -> None:
        self.name, self.host, self.port = name, host, port
        self._state = _State(name, api_key)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._admin: FakeProviderAdmin | None = None

    def start(self) -> FakeProvider:
        if self._server is None:
            self._server = _Server((self.host, self.port), self._state)
            self.port = self._server.server_port
            self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                            name=f"fake-provider-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
        if self._server is not None:
            self._server.stop()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakeProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeProvider is not started")
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url  # the anthropic SDK appends /v1/messages itself

    @property
    def admin(self) -> FakeProviderAdmin:
        if self._admin is None:
            # Imported here: this file also runs as a script (no package for a relative import).
            from .admin import FakeProviderAdmin

            self._admin = FakeProviderAdmin(self.url)
        return self._admin


def serve(host: str = "127.0.0.1", port: int = 8001, name: str = "fake", api_key: str | None = None) -> None:
    """Serve until SIGTERM/SIGINT; prints one 'listening' line so scripts can wait for readiness."""
    done = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
    with FakeProvider(name=name, host=host, port=port, api_key=api_key) as fp:
        print(f"fake provider {name} listening on {fp.url}", flush=True)
        while not done.wait(0.5):
            pass


def main(argv: list[str] | None = None) -> int:
    """CLI behind ``flexitasks fake-provider``; the key comes from an env var, never argv."""
    p = argparse.ArgumentParser(prog="flexitasks fake-provider", description="Fake OpenAI/Anthropic API.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001, help="0 picks a free port (printed when ready)")
    p.add_argument("--name", default="fake", help="provider name, prefixed to every answer")
    p.add_argument("--api-key-env", help="env var holding the API key clients must send (default: any key)")
    args = p.parse_args(argv)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        print(f"error: environment variable {args.api_key_env} is not set", file=sys.stderr)
        return 2
    try:
        serve(args.host, args.port, args.name, api_key)
    except OSError as e:
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
