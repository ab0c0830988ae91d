"""What a provider answered, checked before anyone sees it: tool calls decoded, JSON validated.

``read_answer`` turns a ``Completion`` into the result's ``content``, ``tool_calls``
(arguments parsed, the same shape whichever provider answered) and ``parsed`` (the JSON
value, for a JSON ``response_format``; checked with ``jsonschema`` for ``json_schema``).
An answer that is not what was asked for raises ``ProviderFailure(INVALID_OUTPUT)``: the
router fails over and the breaker does not count it. Pure: no I/O, no routing.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import ChatRequest, JSONObjectFormat, JSONSchemaFormat
from flexitasks.providers.base import Completion
from flexitasks.providers.wire import anthropic_answer


@dataclass(frozen=True)
class Answer:
    completion: Completion
    content: str
    finish_reason: str
    tool_calls: list[dict[str, Any]]
    parsed: Any = None


def invalid(message: str) -> ProviderFailure:
    return ProviderFailure(FailureKind.INVALID_OUTPUT, message[:500])


def read_answer(request: ChatRequest, completion: Completion) -> Answer:
    content, finish = completion.content, completion.finish_reason
    calls: list[dict[str, Any]] = list(getattr(completion, "tool_calls", None) or [])
    undone = anthropic_answer(request, content, calls)
    if undone is not None:  # the JSON answer came as the answer tool's input
        content, calls = undone
        finish = finish if calls else "end_turn"
    tool_calls = [_decoded(call) for call in calls]
    parsed = None
    fmt = request.json_format
    if fmt is not None and not tool_calls:  # a turn that calls tools is not the final answer
        parsed = _parsed(content, fmt)
    return Answer(completion, content, finish, tool_calls, parsed)


def _decoded(call: dict[str, Any]) -> dict[str, Any]:
    name = call.get("name") or ""
    text = call.get("arguments")
    try:
        arguments = json.loads(text) if text else {}
    except ValueError as exc:
        raise invalid(f"tool call {name!r}: arguments are not JSON ({exc.msg})") from None
    if not isinstance(arguments, dict):
        raise invalid(f"tool call {name!r}: arguments are not a JSON object")
    return {"id": call.get("id") or "", "name": name, "arguments": arguments}


def _parsed(content: str, fmt: JSONObjectFormat | JSONSchemaFormat) -> Any:
    try:
        value = json.loads(content)
    except ValueError as exc:
        raise invalid(f"the answer is not JSON ({exc.msg} at {exc.pos}): {content[:80]!r}") from None
    if isinstance(fmt, JSONObjectFormat):
        if not isinstance(value, dict):
            raise invalid("the answer is JSON but not an object")
        return value
    error = best_match(_validator(json.dumps(fmt.json_schema.schema_, sort_keys=True)).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise invalid(f"the answer does not match schema {fmt.json_schema.name!r} at {where}: {error.message}")
    return value


@functools.lru_cache(maxsize=256)
def _validator(schema_json: str) -> Draft202012Validator:
    """One compiled validator per schema (requests repeat their schema)."""
    return Draft202012Validator(json.loads(schema_json))
