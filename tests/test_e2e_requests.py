"""Tools, JSON answers and images through a real worker, in both wire formats (primary
speaks OpenAI's, secondary Anthropic's), and a provider skipped for a capability."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator

import pytest
from conftest import WORKDIR

from flexitasks import InvalidRequest, chat_task
from flexitasks.harness import wait_until

pytestmark = pytest.mark.usefixtures("worker")

WIRE = pytest.mark.parametrize("provider", ["primary", "secondary"])
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "user", "content": "weather in Oslo"}]
VERDICT = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": {
    "type": "object", "properties": {"label": {"enum": ["spam", "ham"]}, "score": {"type": "number", "minimum": 0}},
    "required": ["label", "score"]}}}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
IMAGE = [{"role": "user", "content": [
    {"type": "text", "text": "what is in these?"},
    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]
TIMEOUT = 30


@WIRE
def test_a_tool_call_and_the_answer_after_its_result(clean, provider):
    first = chat_task.delay(ASK, tools=[WEATHER], providers=[provider]).get(timeout=TIMEOUT)
    assert first["provider"] == provider
    assert first["finish_reason"] == {"primary": "tool_calls", "secondary": "tool_use"}[provider]
    [call] = first["tool_calls"]
    assert (call["name"], call["arguments"]) == ("get_weather", {"city": "weather in Oslo"})
    history = [*ASK,
               {"role": "assistant", "tool_calls": [{"id": call["id"], "type": "function", "function": {
                   "name": call["name"], "arguments": json.dumps(call["arguments"])}}]},
               {"role": "tool", "tool_call_id": call["id"], "content": "12 C and rain"}]
    second = chat_task.delay(history, tools=[WEATHER], providers=[provider]).get(timeout=TIMEOUT)
    assert second["tool_calls"] == [] and second["content"].startswith(f"{provider}: ")


def test_a_json_object_answer_through_anthropics_answer_tool(clean):
    result = chat_task.delay(ASK, response_format={"type": "json_object"}, providers=["secondary"]).get(timeout=TIMEOUT)
    assert result["parsed"] == {} and result["tool_calls"] == [] and result["finish_reason"] == "end_turn"


@WIRE
def test_a_json_schema_answer_is_parsed(clean, provider):
    trace = {"trace_id": f"t-{provider}-{uuid.uuid4().hex[:8]}"}
    sent = chat_task.delay(ASK, response_format=VERDICT, providers=[provider], metadata=trace)
    result = sent.get(timeout=TIMEOUT)
    assert result["parsed"]["label"] == "spam" and result["parsed"]["score"] >= 0
    log = WORKDIR / "worker-w1.log"  # the caller's tracing data is logged beside the task id
    line = f'metadata {{"trace_id": "{trace["trace_id"]}"}}'
    wait_until(lambda: any(sent.id in ln and line in ln for ln in log.read_text().splitlines()), 10,
               what="the metadata line in the worker log")
    assert json.loads(result["content"]) == result["parsed"] and result["tool_calls"] == []


def test_an_answer_that_is_not_json_fails_over_without_blame(clean):
    clean["primary"].admin.set_fault(mode="bad_json")
    result = chat_task.delay(ASK, response_format=VERDICT).get(timeout=TIMEOUT)
    assert result["provider"] == "secondary" and result["parsed"]["label"] == "spam"
    assert [(a["provider"], a["outcome"]) for a in result["attempts"]] == [("primary", "error"), ("secondary", "ok")]
    assert result["attempts"][0]["error"].startswith("invalid_output: the answer is not JSON")
    assert clean["primary"].admin.stats()["requests"] == 1  # not retried on the provider that answered badly


@WIRE
def test_images_reach_the_provider(clean, provider):
    result = chat_task.delay(IMAGE, providers=[provider]).get(timeout=TIMEOUT)
    assert result["provider"] == provider and result["content"] == f"{provider}: what is in these?"
    [seen] = clean[provider].admin.requests()
    assert seen["images"] == [{"source": "base64", "media_type": "image/png", "chars": len(PNG)},
                              {"source": "url", "url": "https://example.com/cat.jpg"}]


@pytest.fixture(scope="module")
def blind_primary_worker(worker, tmp_path_factory) -> Iterator[str]:
    """A worker of its own, on a queue of its own, whose config says primary has no vision."""
    from conftest import SETTINGS, start_worker, stop_worker, wait_for_worker

    providers = [p.model_copy(update={"capabilities": ["tools", "json_schema"]}) if p.name == "primary" else p
                 for p in SETTINGS.providers]
    config = tmp_path_factory.mktemp("blind") / "flexitasks.toml"
    config.write_text(SETTINGS.model_copy(update={"providers": providers}).to_toml())
    saved = os.environ["FLEXITASKS_CONFIG"]
    os.environ["FLEXITASKS_CONFIG"] = str(config)  # read by the worker's process, not this one's app
    try:
        proc = start_worker("-Q", "blindq", name="blindq", concurrency=1)
    finally:
        os.environ["FLEXITASKS_CONFIG"] = saved
    try:
        wait_for_worker("blindq@")
        yield "blindq"
    finally:
        stop_worker(proc)


def test_a_provider_without_vision_is_skipped_and_none_left_is_invalid(clean, blind_primary_worker):
    result = chat_task.apply_async(args=[IMAGE], queue=blind_primary_worker).get(timeout=TIMEOUT)
    assert result["provider"] == "secondary"
    assert [(a["provider"], a["outcome"], a["error"]) for a in result["attempts"]] == [
        ("primary", "skipped", "no vision"), ("secondary", "ok", None)]
    with pytest.raises(InvalidRequest, match=r"no provider can take images \(primary: no vision\)"):
        chat_task.apply_async(args=[IMAGE], kwargs={"providers": ["primary"]},
                              queue=blind_primary_worker).get(timeout=TIMEOUT)
    assert clean["primary"].admin.stats()["requests"] == 0
