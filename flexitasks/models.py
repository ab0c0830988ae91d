"""The task's wire contract: what a producer sends and what it gets back.

Pydantic models only; no I/O, no provider SDK. The caller speaks the OpenAI chat format
(messages with text and image parts, assistant tool calls, tool results; tools,
tool_choice, response_format, ...). ``ChatRequest.parse`` is the single gate through
which task arguments enter the worker: every malformed input becomes one
``InvalidRequest`` naming the field, before any provider call. Translation to each
provider's wire format lives in ``providers/wire.py``, not here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, SchemaError
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from flexitasks.errors import InvalidRequest
from flexitasks.redact import redact

DEFAULT_MAX_REQUEST_BYTES = 20 * 1024 * 1024
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"  # OpenAI's rule for tool and schema names; Anthropic's is the same
DATA_URL = re.compile(r"^data:(image/(?:png|jpeg|gif|webp));base64,(.*)$", re.DOTALL)

# Tags of the unions below. They contain a space so the error formatter can drop them
# from error locations (pydantic puts the chosen tag into ``loc``).
_STR, _PARTS = "text content", "content parts"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _schema_problem(schema: dict[str, Any]) -> str | None:
    """None if ``schema`` is a valid JSON Schema (2020-12), else what is wrong."""
    try:
        return _checked_schema(json.dumps(schema, sort_keys=True))
    except (TypeError, ValueError):
        return "not a JSON document"


def _valid_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` itself when it is a valid JSON Schema; else a ValueError saying what is wrong."""
    problem = _schema_problem(schema)
    if problem:
        raise ValueError(problem)
    return schema


@functools.lru_cache(maxsize=512)
def _checked_schema(schema_json: str) -> str | None:
    """Checking a schema against the metaschema costs ~2 ms; producers repeat their schemas."""
    schema = json.loads(schema_json)
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"not a valid JSON schema{f' at {where}' if where else ''}: {exc.message}"
    return None


# ---- content ---------------------------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None

    @field_validator("url")
    @classmethod
    def _https_or_data(cls, url: str) -> str:
        if url.startswith("data:"):
            match = DATA_URL.match(url)
            if match is None:
                raise ValueError("a data URL must be data:image/(png|jpeg|gif|webp);base64,<data>")
            try:
                if not base64.b64decode(match.group(2), validate=True):
                    raise ValueError("the data URL holds no image data")
            except binascii.Error:
                raise ValueError("the data URL's base64 data is not valid base64") from None
            return url
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("an image URL must be https://... or data:image/...;base64,...")
        return url

    @property
    def data(self) -> tuple[str, str] | None:
        """(media type, base64 data) of a data URL; None for an https URL."""
        match = DATA_URL.match(self.url)
        return (match.group(1), match.group(2)) if match else None


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: ImageURL


def _part_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return {"text": "text part", "image_url": "image part"}.get(kind) if isinstance(kind, str) else None


Part = Annotated[
    Annotated[TextPart, Tag("text part")] | Annotated[ImagePart, Tag("image part")],
    Discriminator(
        _part_tag,
        custom_error_type="part_type",
        custom_error_message="unknown part type: expected 'text' or 'image_url'",
    ),
]


def _content_tag(value: Any) -> str:
    return _STR if isinstance(value, str) else _PARTS


Content = Annotated[
    Annotated[str, Tag(_STR)] | Annotated[list[Part], Tag(_PARTS)],
    Discriminator(_content_tag),
]


def content_text(content: str | list[Any] | None) -> str:
    """The text of a content (parts joined with newlines; images left out)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "\n".join(p.text for p in content if isinstance(p, TextPart))


def _images_only_for_users(role: str, content: Any) -> None:
    if isinstance(content, list) and any(isinstance(p, ImagePart) for p in content):
        raise ValueError(f"images are only allowed in user messages, not in {role} messages")


# ---- tool calls ------------------------------------------------------------------------


class FunctionCall(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    arguments: str
    """JSON text of an object, as the model wrote it."""

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, text: str) -> str:
        try:
            value = json.loads(text or "{}")
        except ValueError:
            raise ValueError("arguments must be JSON text (of an object)") from None
        if not isinstance(value, dict):
            raise ValueError("arguments must be the JSON text of an object")
        return text

    @property
    def parsed_arguments(self) -> dict[str, Any]:
        return json.loads(self.arguments or "{}")


class ToolCall(_Strict):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: FunctionCall


# ---- messages --------------------------------------------------------------------------


class SystemMessage(_Strict):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        _images_only_for_users("system", content)
        if not content_text(content):
            raise ValueError("must not be empty")
        return content


class UserMessage(_Strict):
    role: Literal["user"]
    content: Content
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _not_empty(cls, content: Any) -> Any:
        if not content:
            raise ValueError("must not be empty")
        return content


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: Content | None = None
    tool_calls: list[ToolCall] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        _images_only_for_users("assistant", content)
        return content

    @model_validator(mode="after")
    def _says_something(self) -> AssistantMessage:
        if not self.content and not self.tool_calls:
            raise ValueError("an assistant message needs content or tool_calls")
        return self


class ToolMessage(_Strict):
    role: Literal["tool"]
    tool_call_id: str = Field(min_length=1)
    content: Content

    @field_validator("content")
    @classmethod
    def _text_only(cls, content: Any) -> Any:
        _images_only_for_users("tool", content)
        return content


def _role_tag(value: Any) -> str | None:
    role = value.get("role") if isinstance(value, dict) else getattr(value, "role", None)
    return f"{role} message" if role in ("system", "developer", "user", "assistant", "tool") else None


Message = Annotated[
    Annotated[SystemMessage, Tag("system message")]
    | Annotated[SystemMessage, Tag("developer message")]
    | Annotated[UserMessage, Tag("user message")]
    | Annotated[AssistantMessage, Tag("assistant message")]
    | Annotated[ToolMessage, Tag("tool message")],
    Discriminator(
        _role_tag,
        custom_error_type="role",
        custom_error_message="must be one of 'system', 'developer', 'user', 'assistant', 'tool'",
    ),
]
ChatMessage = SystemMessage | UserMessage | AssistantMessage | ToolMessage


# ---- options ---------------------------------------------------------------------------


class FunctionDef(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if schema.get("type") != "object":
            raise ValueError('the parameters schema must be of "type": "object"')
        return _valid_schema(schema)


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str = Field(min_length=1)


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Annotated[
    Annotated[Literal["auto", "none", "required"], Tag("choice word")]
    | Annotated[NamedToolChoice, Tag("named choice")],
    Discriminator(
        lambda v: "choice word" if isinstance(v, str) else "named choice",
        custom_error_type="tool_choice",
        custom_error_message="expected 'auto', 'none', 'required' or {'type': 'function', 'function': {'name'}}",
    ),
]


class JSONSchemaSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _json_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        return _valid_schema(schema)


class TextFormat(_Strict):
    type: Literal["text"]


class JSONObjectFormat(_Strict):
    type: Literal["json_object"]


class JSONSchemaFormat(_Strict):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


def _format_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return f"{kind} format" if kind in ("text", "json_object", "json_schema") else None


ResponseFormat = Annotated[
    Annotated[TextFormat, Tag("text format")]
    | Annotated[JSONObjectFormat, Tag("json_object format")]
    | Annotated[JSONSchemaFormat, Tag("json_schema format")],
    Discriminator(
        _format_tag,
        custom_error_type="response_format",
        custom_error_message="must be 'text', 'json_object' or 'json_schema'",
    ),
]


# ---- the request -----------------------------------------------------------------------


class ChatRequest(_Strict):
    """A validated chat request: messages plus the options of ``chat_task.delay``."""

    messages: list[Message] = Field(min_length=1)
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=128)
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    seed: int | None = None
    providers: list[str] | None = Field(default=None, min_length=1)
    metadata: dict[Annotated[str, Field(max_length=64)], Any] | None = Field(default=None, max_length=16)
    """For tracing: logged and carried in events, never sent to a provider."""

    @field_validator("messages")
    @classmethod
    def _needs_a_turn(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if all(isinstance(m, SystemMessage) for m in messages):
            raise ValueError("needs at least one user or assistant message")
        called: set[str] = set()
        for i, m in enumerate(messages):
            if isinstance(m, AssistantMessage):
                called.update(c.id for c in m.tool_calls or ())
            elif isinstance(m, ToolMessage) and m.tool_call_id not in called:
                raise ValueError(
                    f"messages[{i}].tool_call_id: {m.tool_call_id!r} answers no earlier assistant tool call"
                )
        return messages

    @field_validator("tools")
    @classmethod
    def _unique_tools(cls, tools: list[Tool] | None) -> list[Tool] | None:
        names = [t.function.name for t in tools or ()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate tool name(s) {', '.join(dupes)}")
        return tools

    @field_validator("stop")
    @classmethod
    def _stop_sequences(cls, stop: str | list[str] | None) -> str | list[str] | None:
        sequences = [stop] if isinstance(stop, str) else stop or []
        if isinstance(stop, list) and not 1 <= len(stop) <= 4:
            raise ValueError("between 1 and 4 stop sequences")
        if any(not s for s in sequences):
            raise ValueError("a stop sequence must not be empty")
        return stop

    @field_validator("metadata")
    @classmethod
    def _small_values(cls, metadata: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, value in (metadata or {}).items():
            if not isinstance(value, str | int | float | bool | None):
                raise ValueError(f"value of {key!r} must be a string, number, boolean or null")
            if isinstance(value, str) and len(value) > 512:
                raise ValueError(f"value of {key!r} is longer than 512 characters")
        return metadata

    @model_validator(mode="after")
    def _choice_names_a_tool(self) -> ChatRequest:
        choice = self.tool_choice
        if choice is None or choice == "none":
            return self
        if not self.tools:
            raise ValueError("tool_choice: needs tools")
        names = {t.function.name for t in self.tools}
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(f"tool_choice: names {choice.function.name!r}, which is not in tools")
        return self

    # ---- views for translation -----------------------------------------------------------

    @property
    def system(self) -> str | None:
        """System and developer messages joined, for APIs (Anthropic) that take them as a parameter."""
        parts = [content_text(m.content) for m in self.messages if isinstance(m, SystemMessage)]
        return "\n\n".join(parts) if parts else None

    @property
    def turns(self) -> list[ChatMessage]:
        return [m for m in self.messages if not isinstance(m, SystemMessage)]

    @property
    def json_format(self) -> JSONObjectFormat | JSONSchemaFormat | None:
        """The JSON response format asked for, if any."""
        fmt = self.response_format
        return fmt if isinstance(fmt, JSONObjectFormat | JSONSchemaFormat) else None

    @property
    def has_images(self) -> bool:
        return any(
            isinstance(p, ImagePart)
            for m in self.messages
            if isinstance(m, UserMessage) and isinstance(m.content, list)
            for p in m.content
        )

    @property
    def uses_tools(self) -> bool:
        """Tools offered, or tool calls in the conversation: only providers with tools can take it."""
        return bool(self.tools) or any(
            isinstance(m, ToolMessage) or (isinstance(m, AssistantMessage) and m.tool_calls) for m in self.messages
        )

    @classmethod
    def parse(
        cls, messages: Any, options: dict[str, Any], max_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    ) -> ChatRequest:
        """Validate task arguments, turning pydantic's report into one ``InvalidRequest``."""
        size = request_size(messages, options)
        if size > max_bytes:
            raise InvalidRequest(
                f"invalid chat request: request: {size} bytes as JSON, more than max_request_bytes ({max_bytes})"
            )
        try:
            return cls.model_validate({"messages": messages, **options})
        except ValidationError as exc:
            raise InvalidRequest(f"invalid chat request: {describe(exc)}") from None


def request_size(messages: Any, options: dict[str, Any]) -> int:
    """Bytes of the request as JSON (what the broker carried, near enough)."""
    try:
        return len(json.dumps({"messages": messages, **options}, separators=(",", ":"), default=str))
    except (TypeError, ValueError):
        return 0  # not JSON-able (a producer in-process): validation reports the field


_TAG_FIELDS = {"role": ["role"], "part_type": ["type"], "response_format": ["type"]}


def describe(exc: ValidationError, limit: int = 5) -> str:
    """Pydantic's report as 'field.path: problem; ...', union tags left out."""
    problems = []
    for err in exc.errors()[:limit]:
        path = [str(p) for p in err["loc"] if not (isinstance(p, str) and " " in p)]
        path += _TAG_FIELDS.get(err["type"], [])  # a union's tag error is about its tag field
        loc = ".".join(path)
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(msg if not loc or msg.startswith(f"{loc}[") else f"{loc}: {msg}")
    more = len(exc.errors()) - limit
    return "; ".join(problems) + (f"; and {more} more" if more > 0 else "")


# ---- the result ------------------------------------------------------------------------


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0


Outcome = Literal["ok", "error", "skipped"]


class Attempt(BaseModel):
    provider: str
    outcome: Outcome
    error: str | None = None
    latency_ms: float = 0.0
    first_token_ms: float | None = None
    """An answered call's time from its start to the first streamed output (null when not measured)."""

    @field_validator("error")
    @classmethod
    def _no_secrets(cls, error: str | None) -> str | None:
        """Results are stored, shown in Flower and logged: no key-like text in them."""
        return redact(error) if error else error


class ResultToolCall(BaseModel):
    """A tool call as the caller gets it, the same whichever provider answered."""

    id: str
    name: str
    arguments: dict[str, Any]


class ChatResult(BaseModel):
    """Field order is part of the contract: Celery (and so Flower and the worker log) cut a
    result's repr at ``resultrepr_maxsize``, so who answered, how, and at what cost come
    before the answer's text."""

    provider: str
    model: str
    finish_reason: str
    usage: Usage
    attempts: list[Attempt]
    latency_ms: float
    cost_usd: float | None = None
    content: str
    tool_calls: list[ResultToolCall] = Field(default_factory=list)
    parsed: JsonValue = None
