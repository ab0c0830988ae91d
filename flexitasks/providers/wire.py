"""Request translation: a ``ChatRequest`` as each API's request parameters, and back.

Pure functions, no I/O and no client: the adapters call them from ``_params`` and the
router's output check calls ``anthropic_answer``. OpenAI kinds get the request as the
caller gave it (it already speaks their format). Anthropic gets a faithful translation:
tools, tool_choice, image blocks, tool_use / tool_result blocks, system, stop
sequences, and JSON formats as its own structured output (``output_config``) where the
installed SDK has it, else as a forced tool whose input is the answer.

What is not sent: ``metadata`` (tracing only) and ``providers`` (routing) never; ``seed``
to Anthropic, which has no such parameter, nor ``temperature`` / ``top_p`` when the
installed ``anthropic`` SDK no longer has them (2.x: its ``create`` raises TypeError).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from flexitasks.config import ProviderSettings
from flexitasks.models import (
    AssistantMessage,
    ChatRequest,
    ImagePart,
    JSONSchemaFormat,
    NamedToolChoice,
    SystemMessage,
    TextPart,
    ToolMessage,
    UserMessage,
    content_text,
)

ANSWER_TOOL = "json_answer"
"""Name of the tool that carries a JSON answer when Anthropic's structured output is not used."""
WRAPPED = "answer"
"""A non-object schema is wrapped as this property of the answer tool's input (tool input is an object)."""


# ---- OpenAI ----------------------------------------------------------------------------


def openai_params(request: ChatRequest, settings: ProviderSettings) -> dict[str, Any]:
    """Chat Completions parameters: the request as given, always streamed, with usage unless
    the provider's ``stream_options`` is off. The ``openai`` kind sends ``max_completion_tokens``
    (the current API takes it for every chat model; newer models refuse ``max_tokens``);
    compatible servers mostly know only ``max_tokens``."""
    limit = "max_completion_tokens" if settings.kind == "openai" else "max_tokens"
    params: dict[str, Any] = {
        "model": settings.model,
        "messages": [m.model_dump(exclude_none=True) for m in request.messages],
        limit: request.max_tokens or settings.max_tokens,
        "stream": True,
    }
    if settings.stream_options:
        params["stream_options"] = {"include_usage": True}
    for name in ("tools", "tool_choice", "response_format"):
        value = getattr(request, name)
        if value is not None:
            params[name] = value if isinstance(value, str) else _dump(value)
    for name in ("stop", "temperature", "top_p", "seed"):
        value = getattr(request, name)
        if value is not None:
            params[name] = value
    return params


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value.model_dump(exclude_unset=True, exclude_none=True, by_alias=True)


# ---- Anthropic -------------------------------------------------------------------------


@functools.cache
def anthropic_accepts(name: str) -> bool:
    """Whether the installed ``anthropic`` SDK has request parameter ``name`` (its
    ``messages.create`` refuses unknown keywords; recent ones dropped ``temperature``)."""
    try:
        from anthropic.types.message_create_params import MessageCreateParamsBase
    except ImportError:  # pragma: no cover - an SDK older than any we support
        return False
    return name in MessageCreateParamsBase.__annotations__


def has_structured_output() -> bool:
    """Whether the installed ``anthropic`` SDK sends ``output_config`` (structured outputs)."""
    return anthropic_accepts("output_config")


def anthropic_params(request: ChatRequest, settings: ProviderSettings) -> dict[str, Any]:
    """Messages API parameters for ``request``, always streamed."""
    params: dict[str, Any] = {
        "model": settings.model,
        "messages": anthropic_messages(request),
        "max_tokens": request.max_tokens or settings.max_tokens,
        "stream": True,
    }
    if request.system:
        params["system"] = request.system
    if request.temperature is not None and anthropic_accepts("temperature"):
        params["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
    if request.top_p is not None and anthropic_accepts("top_p"):
        params["top_p"] = request.top_p
    if request.stop is not None:
        params["stop_sequences"] = [request.stop] if isinstance(request.stop, str) else list(request.stop)
    tools = [_anthropic_tool(t.function) for t in request.tools or ()]
    choice = _anthropic_tool_choice(request.tool_choice) if request.tool_choice is not None else None
    fmt = request.json_format
    output_format = _output_format(fmt) if isinstance(fmt, JSONSchemaFormat) else None
    if output_format is not None:
        params["output_config"] = {"format": output_format}
    elif fmt is not None:  # json_object, or a schema the structured output cannot take: a forced tool
        name = answer_tool_name(request)
        tools.append({"name": name, "description": "Give your complete answer as this tool's input.",
                      "input_schema": answer_schema(request)})
        if not request.tools or choice in (None, {"type": "none"}):
            choice = {"type": "tool", "name": name}
        elif choice["type"] == "auto":
            choice = {"type": "any"}  # a tool call, or the answer: never free text
    if tools:
        params["tools"] = tools
    if choice is not None:
        params["tool_choice"] = choice
    return params


def _anthropic_tool(fn: Any) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": fn.name, "input_schema": fn.parameters}
    if fn.description:
        tool["description"] = fn.description
    if fn.strict:
        tool["strict"] = True
    return tool


def _anthropic_tool_choice(choice: Any) -> dict[str, Any]:
    if isinstance(choice, NamedToolChoice):
        return {"type": "tool", "name": choice.function.name}
    return {"type": {"auto": "auto", "required": "any", "none": "none"}[choice]}


def _output_format(fmt: JSONSchemaFormat) -> dict[str, Any] | None:
    """Anthropic's structured output for a JSON schema, or None when the SDK or the
    schema rule it out. The SDK's own ``transform_schema`` makes the schema one the API
    takes (additionalProperties false, unsupported keywords moved into descriptions);
    the answer is still validated against the caller's schema as given."""
    if not has_structured_output():
        return None
    import anthropic

    try:
        schema = anthropic.transform_schema(fmt.json_schema.schema_)
    except (AttributeError, ValueError, TypeError, AssertionError):
        return None
    return {"type": "json_schema", "schema": schema}


def answer_tool_name(request: ChatRequest) -> str:
    taken = {t.function.name for t in request.tools or ()}
    name = ANSWER_TOOL
    while name in taken:
        name = f"flexitasks_{name}"
    return name


def answer_schema(request: ChatRequest) -> dict[str, Any]:
    """The answer tool's input schema: the caller's object schema, a non-object one wrapped."""
    fmt = request.json_format
    if not isinstance(fmt, JSONSchemaFormat):
        return {"type": "object"}
    schema = fmt.json_schema.schema_
    if schema.get("type") == "object":
        return schema
    return {"type": "object", "properties": {WRAPPED: schema}, "required": [WRAPPED]}


def anthropic_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """The conversation without system messages; consecutive turns of one role merged
    (consecutive tool results become one user message of ``tool_result`` blocks)."""
    out: list[dict[str, Any]] = []
    for message in request.turns:
        role = "assistant" if isinstance(message, AssistantMessage) else "user"
        content = _anthropic_content(message)
        if out and out[-1]["role"] == role:
            out[-1]["content"] = _blocks(out[-1]["content"]) + _blocks(content)
        else:
            out.append({"role": role, "content": content})
    return out


def _blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _anthropic_content(message: Any) -> str | list[dict[str, Any]]:
    if isinstance(message, ToolMessage):
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
        text = content_text(message.content)
        if text:
            block["content"] = text
        return [block]
    if isinstance(message, AssistantMessage):
        blocks = _part_blocks(message.content) if message.content else []
        for call in message.tool_calls or ():
            blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name,
                           "input": call.function.parsed_arguments})
        if isinstance(message.content, str) and not message.tool_calls:
            return message.content
        return blocks
    assert isinstance(message, UserMessage | SystemMessage)
    return message.content if isinstance(message.content, str) else _part_blocks(message.content)


def _part_blocks(content: str | list[Any]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text:  # the API refuses empty text blocks
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append({"type": "image", "source": _image_source(part)})
    return blocks


def _image_source(part: ImagePart) -> dict[str, Any]:
    data = part.image_url.data
    if data is not None:
        return {"type": "base64", "media_type": data[0], "data": data[1]}
    return {"type": "url", "url": part.image_url.url}


def anthropic_answer(
    request: ChatRequest, content: str, tool_calls: list[dict[str, Any]]
) -> tuple[str, list[dict[str, Any]]] | None:
    """Undo the answer tool: (its input as the content, the other tool calls), or None
    when the answer did not come through it (no JSON format, structured output, or a
    call of the caller's own tools)."""
    if request.json_format is None or not tool_calls:
        return None
    name = answer_tool_name(request)
    answers = [c for c in tool_calls if c.get("name") == name]
    if not answers:
        return None
    text = answers[0].get("arguments") or "{}"
    fmt = request.json_format
    if isinstance(fmt, JSONSchemaFormat) and fmt.json_schema.schema_.get("type") != "object":
        try:
            value = json.loads(text)
        except ValueError:
            value = None  # not JSON: the output check reports the text as it came
        if isinstance(value, dict) and WRAPPED in value:
            text = json.dumps(value[WRAPPED])
    return text, [c for c in tool_calls if c.get("name") != name]
