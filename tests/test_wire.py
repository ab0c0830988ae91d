"""Request translation, checked against the SDKs' own request TypedDicts (strictly:
unknown keys, missing required keys and wrong types all fail) and for meaning."""

from __future__ import annotations

import json

import pytest
from anthropic.types.message_create_params import MessageCreateParamsStreaming
from openai.types.chat.completion_create_params import CompletionCreateParamsStreaming
from sdk_shapes import problems

from flexitasks.config import ProviderSettings
from flexitasks.models import ChatRequest
from flexitasks.providers import wire

OPENAI = ProviderSettings(name="o", kind="openai", model="gpt-4o-mini", max_tokens=256)
ANTHROPIC = ProviderSettings(name="a", kind="anthropic", model="claude-sonnet-4-5", max_tokens=256)
PNG_DATA = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {"name": "get_time"}}
SCHEMA = {"type": "object", "properties": {"label": {"type": "string", "enum": ["spam", "ham"]},
                                           "score": {"type": "number", "minimum": 0}},
          "required": ["label", "score"]}
AGENT = [
    {"role": "system", "content": "Use tools."},
    {"role": "developer", "content": [{"type": "text", "text": "Be exact."}]},
    {"role": "user", "content": [{"type": "text", "text": "Weather and time in Oslo?"},
                                 {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_DATA}"}},
                                 {"type": "image_url", "image_url": {"url": "https://example.com/map.jpg"}}]},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "14:00"}]},
    {"role": "user", "content": "Thanks; summarise."},
]


def req(messages=AGENT, **options) -> ChatRequest:
    return ChatRequest.parse(messages, options)


def oai(request: ChatRequest) -> dict:
    params = wire.openai_params(request, OPENAI)
    assert problems(params, CompletionCreateParamsStreaming) == []
    return params


def ant(request: ChatRequest) -> dict:
    params = wire.anthropic_params(request, ANTHROPIC)
    assert problems(params, MessageCreateParamsStreaming) == []
    return params


def test_the_shape_checker_catches_what_it_should():
    assert problems({"model": "m", "messages": [], "stream": True, "bogus": 1}, CompletionCreateParamsStreaming)
    assert problems({"model": "m", "max_tokens": 1, "stream": True,
                     "messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]},
                    MessageCreateParamsStreaming)


# ---- OpenAI: the request as given ------------------------------------------------------


def test_openai_gets_the_request_as_given():
    options = {"tools": [WEATHER, TIME], "tool_choice": {"type": "function", "function": {"name": "get_time"}},
               "stop": ["END"], "top_p": 0.5, "seed": 3, "temperature": 0.2, "max_tokens": 99,
               "metadata": {"trace": "t"}, "providers": ["o"]}
    params = oai(req(**options))
    assert params["messages"] == AGENT
    assert params["tools"] == [WEATHER, TIME]
    assert params["tool_choice"] == options["tool_choice"]
    assert (params["stop"], params["top_p"], params["seed"], params["temperature"]) == (["END"], 0.5, 3, 0.2)
    assert params["max_completion_tokens"] == 99 and params["stream"] is True
    assert params["stream_options"] == {"include_usage": True}
    assert "metadata" not in params and "providers" not in params


def test_openai_defaults_and_formats():
    params = oai(req([{"role": "user", "content": "hi"}]))
    assert params == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                      "max_completion_tokens": 256, "stream": True, "stream_options": {"include_usage": True}}
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA, "strict": True}}
    assert oai(req(response_format=fmt))["response_format"] == fmt
    assert oai(req(response_format={"type": "json_object"}))["response_format"] == {"type": "json_object"}
    assert oai(req(tools=[WEATHER], tool_choice="required"))["tool_choice"] == "required"


# ---- Anthropic: a faithful translation -------------------------------------------------


def test_anthropic_conversation_translation():
    params = ant(req(tools=[WEATHER, TIME], stop="END", top_p=0.5, seed=3, temperature=1.7))
    assert params["system"] == "Use tools.\n\nBe exact."
    user, assistant, results = params["messages"]
    assert user["role"] == "user" and user["content"] == [
        {"type": "text", "text": "Weather and time in Oslo?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_DATA}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/map.jpg"}},
    ]
    assert assistant == {"role": "assistant", "content": [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}},
    ]}
    # both tool results and the next user turn are one user message, results first
    assert results == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "12 C"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "14:00"},
        {"type": "text", "text": "Thanks; summarise."},
    ]}
    assert params["stop_sequences"] == ["END"]
    assert "seed" not in params and "metadata" not in params
    assert params["tools"] == [
        {"name": "get_weather", "description": "Weather in a city",
         "input_schema": WEATHER["function"]["parameters"]},
        {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in params


def test_anthropic_sampling_options_only_where_the_sdk_has_them(monkeypatch):
    request = req([{"role": "user", "content": "hi"}], temperature=1.7, top_p=0.5)
    has = {"temperature": wire.anthropic_accepts("temperature"), "top_p": wire.anthropic_accepts("top_p")}
    params = ant(request)
    assert ("temperature" in params, "top_p" in params) == (has["temperature"], has["top_p"])
    monkeypatch.setattr(wire, "anthropic_accepts", lambda name: True)
    params = wire.anthropic_params(request, ANTHROPIC)
    assert (params["temperature"], params["top_p"]) == (1.0, 0.5)  # Anthropic's temperature range is 0..1


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("auto", {"type": "auto"}), ("required", {"type": "any"}), ("none", {"type": "none"}),
     ({"type": "function", "function": {"name": "get_time"}}, {"type": "tool", "name": "get_time"})],
)
def test_anthropic_tool_choice(choice, expected):
    assert ant(req(tools=[WEATHER, TIME], tool_choice=choice))["tool_choice"] == expected


def test_anthropic_plain_text_stays_plain():
    params = ant(req([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                      {"role": "user", "content": "again"}]))
    assert params["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                                  {"role": "user", "content": "again"}]
    assert "system" not in params and "tools" not in params


def test_anthropic_json_schema_uses_structured_output():
    assert wire.has_structured_output()  # the installed SDK has output_config
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": SCHEMA}}
    params = ant(req([{"role": "user", "content": "classify"}], response_format=fmt))
    out = params["output_config"]["format"]
    assert out["type"] == "json_schema"
    assert out["schema"]["properties"]["label"]["enum"] == ["spam", "ham"]
    assert out["schema"]["additionalProperties"] is False  # the SDK's transform, as its own parse() does
    assert "tools" not in params and "tool_choice" not in params


def test_anthropic_json_object_is_a_forced_answer_tool():
    params = ant(req([{"role": "user", "content": "as JSON"}], response_format={"type": "json_object"}))
    assert params["tools"] == [{"name": "json_answer", "description": "Give your complete answer as this tool's input.",
                                "input_schema": {"type": "object"}}]
    assert params["tool_choice"] == {"type": "tool", "name": "json_answer"}


def test_anthropic_json_with_the_callers_tools_may_call_them_or_answer():
    params = ant(req([{"role": "user", "content": "x"}], tools=[WEATHER, {"type": "function",
                     "function": {"name": "json_answer"}}], tool_choice="auto",
                     response_format={"type": "json_object"}))
    assert [t["name"] for t in params["tools"]] == ["get_weather", "json_answer", "flexitasks_json_answer"]
    assert params["tool_choice"] == {"type": "any"}


def test_anthropic_schema_without_structured_output_falls_back_to_the_tool(monkeypatch):
    monkeypatch.setattr(wire, "has_structured_output", lambda: False)
    listing = {"type": "array", "items": {"type": "string"}}
    request = req([{"role": "user", "content": "list"}],
                  response_format={"type": "json_schema", "json_schema": {"name": "l", "schema": listing}})
    params = ant(request)
    assert "output_config" not in params
    assert params["tools"][0]["input_schema"] == {"type": "object", "properties": {"answer": listing},
                                                  "required": ["answer"]}
    calls = [{"id": "t1", "name": "json_answer", "arguments": json.dumps({"answer": ["a", "b"]})}]
    assert wire.anthropic_answer(request, "", calls) == ('["a", "b"]', [])


def test_anthropic_answer_leaves_other_calls_alone():
    request = req([{"role": "user", "content": "x"}], tools=[WEATHER], response_format={"type": "json_object"})
    weather = {"id": "t1", "name": "get_weather", "arguments": '{"city": "Oslo"}'}
    answer = {"id": "t2", "name": "json_answer", "arguments": '{"ok": true}'}
    assert wire.anthropic_answer(request, "", [weather]) is None
    assert wire.anthropic_answer(request, "", [weather, answer]) == ('{"ok": true}', [weather])
    assert wire.anthropic_answer(req([{"role": "user", "content": "x"}], tools=[WEATHER]), "", [weather]) is None
