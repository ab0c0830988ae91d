"""Request validation: every bad input is one InvalidRequest naming the field; good
OpenAI-format requests (parts, images, tool calls, options) pass unchanged."""

from __future__ import annotations

import json

import pytest

from flexitasks.errors import InvalidRequest
from flexitasks.models import ChatRequest, ChatResult, ImagePart, ToolMessage, Usage

USER = {"role": "user", "content": "hi"}
PNG = ("data:image/png;base64,"
       "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}


def image(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def invalid(messages, **options) -> str:
    with pytest.raises(InvalidRequest) as info:
        ChatRequest.parse(messages, options)
    return str(info.value)


def test_a_full_agent_turn_is_accepted():
    request = ChatRequest.parse(
        [
            {"role": "developer", "content": "Use tools."},
            {"role": "user", "content": [{"type": "text", "text": "Weather here?"}, image(PNG)]},
            {"role": "assistant", "content": None, "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12 C, rain"},
        ],
        {"tools": [TOOL], "tool_choice": "auto", "stop": ["END"], "top_p": 0.9, "seed": 7,
         "metadata": {"trace_id": "abc", "attempt": 1}},
    )
    assert request.system == "Use tools."
    assert [m.role for m in request.turns] == ["user", "assistant", "tool"]
    assert request.has_images and request.uses_tools
    assert isinstance(request.messages[3], ToolMessage)
    part = request.messages[1].content[1]
    assert isinstance(part, ImagePart) and part.image_url.data[0] == "image/png"


def test_an_https_image_and_json_formats_are_accepted():
    request = ChatRequest.parse(
        [{"role": "user", "content": [image("https://example.com/cat.jpg")]}],
        {"response_format": {"type": "json_schema",
                             "json_schema": {"name": "cat", "schema": {"type": "object"}, "strict": True}}},
    )
    assert request.json_format is not None and request.json_format.json_schema.schema_ == {"type": "object"}
    assert ChatRequest.parse([USER], {"response_format": {"type": "json_object"}}).json_format is not None
    assert ChatRequest.parse([USER], {"response_format": {"type": "text"}}).json_format is None


@pytest.mark.parametrize(
    ("messages", "options", "expected"),
    [
        ([{"role": "robot", "content": "x"}], {}, "messages.0.role: must be one of"),
        ([{"role": "user", "content": ""}], {}, "messages.0.content: must not be empty"),
        ([{"role": "user", "content": [{"type": "audio", "data": "x"}]}], {},
         "messages.0.content.0.type: unknown part type"),
        ([{"role": "user", "content": [image("http://example.com/a.png")]}], {}, "messages.0.content.0.image_url.url"),
        ([{"role": "user", "content": [image("data:image/png;base64,@@@")]}], {}, "not valid base64"),
        ([{"role": "user", "content": [image("data:image/bmp;base64,AAAA")]}], {}, "data:image/(png|jpeg|gif|webp)"),
        ([{"role": "user", "content": [image("data:image/png;base64,")]}], {}, "no image data"),
        ([USER, {"role": "assistant", "content": [image(PNG)]}], {}, "messages.1.content: images are only allowed"),
        ([{"role": "system", "content": [image(PNG)]}, USER], {}, "messages.0.content: images are only allowed"),
        ([USER, {"role": "tool", "tool_call_id": "call_9", "content": "r"}], {}, "messages[1].tool_call_id"),
        ([USER, {"role": "tool", "content": "r"}], {}, "messages.1.tool_call_id: Field required"),
        ([USER, {"role": "assistant"}], {}, "messages.1: an assistant message needs content or tool_calls"),
        ([USER, {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{"}}]}], {},
         "messages.1.tool_calls.0.function.arguments"),
        ([USER], {"tools": [{"type": "function", "function": {"description": "no name"}}]},
         "tools.0.function.name: Field required"),
        ([USER], {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]},
         'tools.0.function.parameters: the parameters schema must be of "type": "object"'),
        ([USER], {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                                         "properties": 3}}}]},
         "tools.0.function.parameters: not a valid JSON schema"),
        ([USER], {"tools": [TOOL, TOOL]}, "tools: duplicate tool name(s) get_weather"),
        ([USER], {"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
        ([USER], {"tool_choice": "auto"}, "tool_choice: needs tools"),
        ([USER], {"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice: Input should be"),
        ([USER], {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
         "tool_choice: names 'other'"),
        ([USER], {"response_format": {"type": "xml"}}, "response_format.type: must be"),
        ([USER], {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format.json_schema.schema: Field required"),
        ([USER], {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
         "response_format.json_schema.schema: not a valid JSON schema"),
        ([USER], {"stop": ["a", "b", "c", "d", "e"]}, "stop: between 1 and 4"),
        ([USER], {"stop": ""}, "stop: a stop sequence must not be empty"),
        ([USER], {"top_p": 1.5}, "top_p"),
        ([USER], {"seed": "x"}, "seed"),
        ([USER], {"metadata": {"a": [1]}}, "metadata: value of 'a' must be"),
        ([USER], {"metadata": {str(i): i for i in range(17)}}, "metadata"),
        ([USER], {"colour": "blue"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_each_bad_input_names_its_field(messages, options, expected):
    assert expected in invalid(messages, **options)


def test_a_request_larger_than_max_request_bytes_is_invalid():
    big = [{"role": "user", "content": "x" * 2000}]
    assert ChatRequest.parse(big, {}, max_bytes=4000).messages
    message = invalid_with_limit(big, 1000)
    assert "max_request_bytes (1000)" in message and "request:" in message


def invalid_with_limit(messages, limit: int) -> str:
    with pytest.raises(InvalidRequest) as info:
        ChatRequest.parse(messages, {}, max_bytes=limit)
    return str(info.value)


def test_many_problems_are_reported_briefly():
    message = invalid([{"role": "user", "content": ""}] * 9)
    assert message.count("must not be empty") == 5 and "and 4 more" in message


def test_result_puts_short_fields_before_content():
    result = ChatResult(provider="p", model="m", finish_reason="stop", usage=Usage(), attempts=[],
                        latency_ms=1.0, content="x" * 5000)
    keys = list(json.loads(result.model_dump_json()))
    assert keys[:8] == ["provider", "model", "finish_reason", "usage", "attempts", "latency_ms", "cost_usd", "content"]
    assert result.model_dump()["tool_calls"] == [] and result.model_dump()["parsed"] is None
