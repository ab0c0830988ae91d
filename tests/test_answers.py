"""What comes back: tool calls decoded, JSON answers validated (else invalid_output, a
failover not blamed on the provider), and providers without a capability skipped."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from flexitasks import capabilities
from flexitasks.breaker.permit import Permit
from flexitasks.config import ProviderSettings, RetrySettings
from flexitasks.errors import InvalidRequest
from flexitasks.failover.policy import Action, default_policy
from flexitasks.failover.router import Router
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest
from flexitasks.output import read_answer
from flexitasks.providers.base import Completion

SCHEMA = {"type": "object", "properties": {"label": {"enum": ["spam", "ham"]}, "score": {"type": "number"}},
          "required": ["label", "score"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}}}}
IMAGE = {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}


@dataclass(frozen=True)
class Reply(Completion):
    """A Completion with tool calls (the field the providers' adapters fill)."""

    tool_calls: list[dict[str, str]] = field(default_factory=list)


def reply(content: str = "", calls: list[dict[str, str]] | None = None, finish: str = "stop") -> Reply:
    return Reply(content, "m", finish, 3, 2, tool_calls=calls or [])


def req(messages: list[dict[str, Any]] | None = None, **options: Any) -> ChatRequest:
    return ChatRequest.parse(messages or [{"role": "user", "content": "hi"}], options)


# ---- output ----------------------------------------------------------------------------


def test_tool_calls_come_back_with_parsed_arguments():
    calls = [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
             {"id": "call_2", "name": "get_weather", "arguments": ""}]
    answer = read_answer(req(tools=[WEATHER]), reply(calls=calls, finish="tool_calls"))
    assert answer.tool_calls == [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}},
                                 {"id": "call_2", "name": "get_weather", "arguments": {}}]
    assert answer.content == "" and answer.parsed is None and answer.finish_reason == "tool_calls"


@pytest.mark.parametrize("arguments", ['{"city": ', "[1, 2]"])
def test_tool_call_arguments_that_are_not_an_object_are_invalid_output(arguments):
    with pytest.raises(ProviderFailure) as info:
        read_answer(req(tools=[WEATHER]), reply(calls=[{"id": "c", "name": "get_weather", "arguments": arguments}]))
    assert info.value.kind is FailureKind.INVALID_OUTPUT and "get_weather" in str(info.value)


def test_a_schema_answer_is_parsed_and_validated():
    answer = read_answer(req(response_format=JSON_SCHEMA), reply('{"label": "spam", "score": 0.9}'))
    assert answer.parsed == {"label": "spam", "score": 0.9}
    assert read_answer(req(response_format={"type": "json_object"}), reply('{"a": [1]}')).parsed == {"a": [1]}
    assert read_answer(req(), reply('{"a": 1}')).parsed is None  # no JSON format asked for


@pytest.mark.parametrize(
    ("fmt", "content", "needle"),
    [
        (JSON_SCHEMA, "Sure! Here it is: {", "the answer is not JSON"),
        (JSON_SCHEMA, '{"label": "eggs", "score": 1}', "at label: 'eggs' is not one of"),
        (JSON_SCHEMA, '{"label": "ham"}', "'score' is a required property"),
        ({"type": "json_object"}, "[1, 2]", "not an object"),
    ],
)
def test_an_answer_that_is_not_the_json_asked_for_is_invalid_output(fmt, content, needle):
    with pytest.raises(ProviderFailure) as info:
        read_answer(req(response_format=fmt), reply(content))
    assert info.value.kind is FailureKind.INVALID_OUTPUT
    assert needle in info.value.message
    assert not info.value.blames_provider
    assert default_policy(RetrySettings()).decide(info.value, 0).action is Action.NEXT_PROVIDER


def test_a_turn_that_calls_tools_is_not_held_to_the_json_format():
    request = req(tools=[WEATHER], response_format=JSON_SCHEMA)
    answer = read_answer(request, reply(calls=[{"id": "c", "name": "get_weather", "arguments": "{}"}]))
    assert answer.parsed is None and answer.tool_calls[0]["name"] == "get_weather"


def test_anthropics_answer_tool_becomes_the_content():
    request = req(response_format={"type": "json_object"})
    answer = read_answer(request, reply(calls=[{"id": "t", "name": "json_answer", "arguments": '{"ok": true}'}],
                                        finish="tool_use"))
    assert (answer.content, answer.parsed, answer.tool_calls, answer.finish_reason) == (
        '{"ok": true}', {"ok": True}, [], "end_turn")


# ---- capabilities ----------------------------------------------------------------------


def settings(name: str, kind: str = "openai", caps: list[str] | None = None, priority: int = 1) -> ProviderSettings:
    return ProviderSettings(name=name, kind=kind, model="m", priority=priority, base_url="http://x/v1",
                            capabilities=caps)


def test_capabilities_default_by_kind_and_can_be_narrowed():
    assert capabilities.of(settings("a", "anthropic")) == {"tools", "vision", "json_schema"}
    assert capabilities.of(settings("c", "openai-compatible")) == {"tools", "json_schema"}
    assert capabilities.of(settings("o", caps=[])) == frozenset()


def test_a_request_needs_what_it_uses():
    assert capabilities.needs(req()) == []
    assert capabilities.needs(req([IMAGE], tools=[WEATHER], response_format=JSON_SCHEMA)) == [
        "tools", "vision", "json_schema"]
    assert capabilities.needs(req(response_format={"type": "json_object"})) == []
    history = [{"role": "user", "content": "x"},
               {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "c", "content": "r"}]
    assert capabilities.needs(req(history)) == ["tools"]  # a conversation with tool calls, tools or not


# ---- the router ------------------------------------------------------------------------


class Adapter:
    def __init__(self, *replies: Completion) -> None:
        self.replies, self.calls = list(replies), 0

    def complete(self, request: ChatRequest, budget: float) -> Completion:
        self.calls += 1
        return self.replies.pop(0)


class Gate:
    def __init__(self) -> None:
        self.failed_kinds: list[FailureKind] = []

    def admit(self, provider: str, may_probe: bool = True) -> Permit | None:
        return Permit(provider)

    def succeeded(self, permit: Permit) -> None:
        pass

    def failed(self, permit: Permit, failure: ProviderFailure) -> None:
        self.failed_kinds.append(failure.kind)

    def cool_down(self, provider: str, seconds: float) -> None:
        pass

    def reopens_in(self, provider: str) -> float | None:
        return None


def router(providers: list[ProviderSettings], adapters: dict[str, Adapter], gate: Gate) -> Router:
    return Router(providers, adapters, gate, default_policy(RetrySettings(), random.Random(1)), request_timeout=20)


def test_invalid_output_fails_over_once_and_is_not_blamed():
    first, second, gate = Adapter(reply("not json")), Adapter(reply('{"label": "ham", "score": 0}')), Gate()
    result = router([settings("a"), settings("b", priority=2)], {"a": first, "b": second}, gate).run(
        req(response_format=JSON_SCHEMA))
    assert result.provider == "b" and result.parsed == {"label": "ham", "score": 0}
    assert [(a.provider, a.outcome) for a in result.attempts] == [("a", "error"), ("b", "ok")]
    assert result.attempts[0].error.startswith("invalid_output: the answer is not JSON")
    assert first.calls == 1  # not retried on the same provider
    assert gate.failed_kinds == [FailureKind.INVALID_OUTPUT]  # the gate counts only kinds that blame


def test_a_provider_without_a_capability_is_skipped_with_the_reason():
    blind, seeing = Adapter(), Adapter(reply("a cat"))
    providers = [settings("blind", caps=["tools"]), settings("seeing", priority=2)]
    result = router(providers, {"blind": blind, "seeing": seeing}, Gate()).run(req([IMAGE]))
    assert result.provider == "seeing" and blind.calls == 0
    assert [(a.provider, a.outcome, a.error) for a in result.attempts] == [
        ("blind", "skipped", "no vision"), ("seeing", "ok", None)]


def test_no_capable_provider_is_an_invalid_request_before_any_call():
    blind = Adapter()
    with pytest.raises(InvalidRequest) as info:
        router([settings("blind", caps=[])], {"blind": blind}, Gate()).run(req([IMAGE], tools=[WEATHER]))
    assert str(info.value) == "invalid chat request: no provider can take tools and images (blind: no tools, no vision)"
    assert blind.calls == 0


def test_result_carries_tool_calls_and_parsed():
    calls = [{"id": "call_1", "name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}]
    result = router([settings("a")], {"a": Adapter(reply(calls=calls, finish="tool_calls"))}, Gate()).run(
        req(tools=[WEATHER]))
    dumped = result.model_dump()
    assert dumped["tool_calls"] == [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert dumped["parsed"] is None and dumped["finish_reason"] == "tool_calls"


def test_capabilities_and_request_limits_are_validated_config():
    from pydantic import ValidationError

    from flexitasks.config import parse_settings

    with pytest.raises(ValidationError):
        settings("o", caps=["smell"])
    loaded = parse_settings({"requests": {"max_request_bytes": 4096}, "providers": [
        {"name": "o", "kind": "openai", "model": "m", "capabilities": ["vision"]}]}, "<test>")
    assert loaded.requests.max_request_bytes == 4096 and loaded.providers[0].capabilities == ["vision"]
    assert parse_settings({}, "<test>").requests.max_request_bytes == 20 * 1024 * 1024
