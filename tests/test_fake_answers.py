"""The fake provider's tool calls, JSON answers and image log, read back through the
official SDKs (their own stream accumulators check the event shapes)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from flexitasks.fake_provider import FakeProvider
from flexitasks.fake_provider.answers import instance

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city", "days"]}}}
A_WEATHER = {"name": "get_weather", "input_schema": WEATHER["function"]["parameters"]}
ASK = [{"role": "user", "content": "weather in Oslo"}]
SCHEMA = {"type": "object", "properties": {"label": {"enum": ["spam", "ham"]}, "tags": {
    "type": "array", "items": {"type": "string"}}}, "required": ["label", "tags"]}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def test_openai_tool_call_streamed_and_not(oai: openai.OpenAI) -> None:
    whole = oai.chat.completions.create(model="m", messages=ASK, tools=[WEATHER])  # type: ignore[arg-type]
    call = whole.choices[0].message.tool_calls[0]
    assert whole.choices[0].finish_reason == "tool_calls" and whole.choices[0].message.content is None
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather", {"city": "weather in Oslo", "days": 1})
    with oai.chat.completions.stream(model="m", messages=ASK, tools=[WEATHER]) as stream:  # type: ignore[arg-type]
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert streamed.id.startswith("call_") and json.loads(streamed.function.arguments) == {
        "city": "weather in Oslo", "days": 1}


def test_anthropic_tool_call_streamed_and_not(ant: anthropic.Anthropic) -> None:
    whole = ant.messages.create(model="c", max_tokens=50, messages=ASK, tools=[A_WEATHER])  # type: ignore[arg-type]
    assert whole.stop_reason == "tool_use" and whole.content[0].type == "tool_use"
    assert whole.content[0].input == {"city": "weather in Oslo", "days": 1}
    with ant.messages.stream(model="c", max_tokens=50, messages=ASK, tools=[A_WEATHER]) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    block = final.content[0]
    assert final.stop_reason == "tool_use" and block.type == "tool_use" and block.id.startswith("toolu_")
    assert (block.name, block.input) == ("get_weather", {"city": "weather in Oslo", "days": 1})


def test_after_tool_results_the_answer_is_text(oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    history = [*ASK, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "c1", "content": "rain"}]
    answer = oai.chat.completions.create(model="m", messages=history, tools=[WEATHER])  # type: ignore[arg-type]
    assert answer.choices[0].finish_reason == "stop" and not answer.choices[0].message.tool_calls
    results = [*ASK, {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather",
                                                         "input": {}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "rain"}]}]
    reply = ant.messages.create(model="c", max_tokens=50, messages=results, tools=[A_WEATHER])  # type: ignore[arg-type]
    assert reply.stop_reason == "end_turn"
    forced = oai.chat.completions.create(model="m", messages=history, tools=[WEATHER],  # type: ignore[arg-type]
                                         tool_choice="required")
    assert forced.choices[0].finish_reason == "tool_calls"
    none = oai.chat.completions.create(model="m", messages=ASK, tools=[WEATHER], tool_choice="none")  # type: ignore[arg-type]
    assert none.choices[0].message.content == "fake: weather in Oslo"


def test_json_answers_in_both_formats(fp: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "v", "schema": SCHEMA}}
    answer = oai.chat.completions.create(model="m", messages=ASK, response_format=fmt)  # type: ignore[arg-type]
    assert json.loads(answer.choices[0].message.content) == {"label": "spam", "tags": ["weather in Oslo"]}
    obj = oai.chat.completions.create(model="m", messages=ASK, response_format={"type": "json_object"})
    assert json.loads(obj.choices[0].message.content) == {"echo": "weather in Oslo"}
    with ant.messages.stream(model="c", max_tokens=50, messages=ASK,  # type: ignore[arg-type]
                             output_config={"format": {"type": "json_schema", "schema": SCHEMA}}) as stream:
        text = stream.get_final_text()
    assert json.loads(text) == {"label": "spam", "tags": ["weather in Oslo"]}
    fp.admin.set_fault(mode="bad_json", count=1)
    broken = oai.chat.completions.create(model="m", messages=ASK, response_format=fmt)  # type: ignore[arg-type]
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.choices[0].message.content)
    assert [(r["fault"], r["status"]) for r in fp.admin.requests()][-1] == ("bad_json", 200)


def test_images_are_echoed_in_the_request_log(fp: FakeProvider, oai: openai.OpenAI, ant: anthropic.Anthropic) -> None:
    oai.chat.completions.create(model="m", messages=[{"role": "user", "content": [  # type: ignore[arg-type]
        {"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}])
    ant.messages.create(model="c", max_tokens=50, messages=[{"role": "user", "content": [  # type: ignore[arg-type]
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]}])
    openai_log, anthropic_log = fp.admin.requests()[-2:]
    expected = [{"source": "base64", "media_type": "image/png", "chars": len(PNG)},
                {"source": "url", "url": "https://example.com/cat.jpg"}]
    assert openai_log["images"] == expected and anthropic_log["images"] == expected


def test_instance_covers_common_schema_forms() -> None:
    assert instance({"type": ["null", "integer"], "minimum": 3}, "e") == 3
    assert instance({"anyOf": [{"const": 7}, {"type": "string"}]}, "e") == 7
    assert instance({"type": "array", "items": {"type": "boolean"}, "minItems": 2}, "e") == [True, True]
    assert instance({"type": "object", "properties": {"a": {"type": "null"}}}, "e") == {"a": None}
