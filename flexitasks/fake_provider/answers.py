"""What the fake provider answers when a request asks for more than text: tool calls and
JSON; and the images a request carried, for its request log.

Pure functions of the request body, in either wire format (OpenAI Chat Completions or
Anthropic Messages), so answers are deterministic and a test can predict them:

- tools offered and a tool call allowed (``tool_choice`` not none) and the last turn is
  the user's own (not tool results), or a tool call forced: one call of the named tool,
  else of the first tool whose name the user's text mentions, else of the first tool;
  its arguments are the smallest value the tool's schema accepts (strings echo the text);
- a JSON format (OpenAI ``response_format``, Anthropic ``output_config.format``): the
  same kind of value for the schema, or ``{"echo": ...}`` for ``json_object``;
- ``bad_json`` (a fault mode): the JSON answer or the tool arguments are cut off, not JSON.

No HTTP here; ``server.py`` sends what this module decides.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

BROKEN_JSON = '{"answer": "cut off'


@dataclass(frozen=True)
class Call:
    id: str
    name: str
    arguments: str  # JSON text (not JSON at all under bad_json)

    @property
    def input(self) -> dict[str, Any]:
        """Anthropic's non-streamed tool_use input (an object even under bad_json)."""
        try:
            value = json.loads(self.arguments)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True)
class Reply:
    json_text: str | None = None  # the answer is this JSON text instead of the echo
    calls: list[Call] = field(default_factory=list)


def reply(body: dict[str, Any], openai: bool, echo: str, bad_json: bool = False) -> Reply:
    tool = _tool_to_call(body, openai, echo)
    if tool is not None:
        name, schema = tool
        arguments = BROKEN_JSON if bad_json else json.dumps(instance(schema, echo))
        prefix = "call_" if openai else "toolu_"
        return Reply(calls=[Call(prefix + uuid.uuid4().hex[:20], name, arguments)])
    schema = _json_schema(body, openai)
    if schema is None:
        return Reply()
    value = {"echo": echo} if schema is True else instance(schema, echo)
    return Reply(json_text=BROKEN_JSON if bad_json else json.dumps(value))


def _tools(body: dict[str, Any], openai: bool) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, dict):
            continue
        spec = tool.get("function") if openai else tool
        if isinstance(spec, dict) and isinstance(spec.get("name"), str):
            schema = spec.get("parameters" if openai else "input_schema")
            out.append((spec["name"], schema if isinstance(schema, dict) else {"type": "object"}))
    return out


def _tool_to_call(body: dict[str, Any], openai: bool, echo: str) -> tuple[str, dict[str, Any]] | None:
    tools = _tools(body, openai)
    if not tools:
        return None
    choice = body.get("tool_choice")
    kind = choice if isinstance(choice, str) else (choice or {}).get("type", "auto")
    if kind == "none":
        return None
    named = None
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name") if openai else choice.get("name")
    forced = named is not None or kind in ("required", "any")
    if not forced and not _users_turn(body, openai):
        return None  # after tool results the model answers in text
    for name, schema in tools:
        if name == named:
            return name, schema
    mentioned = [t for t in tools if t[0] in echo]
    return (mentioned or tools)[0]


def _users_turn(body: dict[str, Any], openai: bool) -> bool:
    messages = [m for m in body.get("messages") or () if isinstance(m, dict)]
    if not messages or messages[-1].get("role") != "user":
        return False
    content = messages[-1].get("content")
    results = isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )
    return openai or not results


def _json_schema(body: dict[str, Any], openai: bool) -> dict[str, Any] | bool | None:
    """The schema a JSON answer must follow; True for "any JSON object"; None: not JSON."""
    if openai:
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_object":
            return True
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    else:
        fmt = (body.get("output_config") or {}).get("format") or {}
        schema = fmt.get("schema") if fmt.get("type") == "json_schema" else None
    return schema if isinstance(schema, dict) else None


def instance(schema: Any, echo: str) -> Any:
    """The smallest value ``schema`` accepts (good enough for the schemas tests use)."""
    if not isinstance(schema, dict):
        return echo
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return instance(schema[key][0], echo)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        keys = schema.get("required") or list(props)
        return {k: instance(props.get(k, {}), echo) for k in keys}
    if kind == "array":
        return [instance(schema.get("items", {}), echo) for _ in range(max(1, schema.get("minItems", 1)))]
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return echo or "x"


def images(body: dict[str, Any], openai: bool) -> list[dict[str, Any]]:
    """The images a request carried, for the request log: kind, media type, size or URL."""
    out: list[dict[str, Any]] = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, dict):
                continue
            if openai and part.get("type") == "image_url":
                url = str((part.get("image_url") or {}).get("url", ""))
                if url.startswith("data:"):
                    head, _, data = url.partition(",")
                    out.append({"source": "base64", "media_type": head[5:].split(";")[0], "chars": len(data)})
                else:
                    out.append({"source": "url", "url": url})
            elif not openai and part.get("type") == "image":
                source = part.get("source") or {}
                if source.get("type") == "base64":
                    out.append({"source": "base64", "media_type": source.get("media_type"),
                                "chars": len(str(source.get("data", "")))})
                else:
                    out.append({"source": source.get("type"), "url": source.get("url")})
    return out
