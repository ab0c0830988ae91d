"""The task's wire contract: what a producer sends and what it gets back.

Pydantic models only; no I/O. ``ChatRequest.parse`` is the single gate through which
task arguments enter the worker, so invalid input is rejected before any provider call.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flexitasks.errors import InvalidRequest

Role = Literal["system", "user", "assistant"]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str = Field(min_length=1)


class ChatRequest(BaseModel):
    """A validated chat request: messages plus the options of ``chat_task.delay``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    providers: list[str] | None = Field(default=None, min_length=1)

    @field_validator("messages")
    @classmethod
    def _needs_a_turn(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if all(m.role == "system" for m in messages):
            raise ValueError("needs at least one user or assistant message")
        return messages

    @property
    def system(self) -> str | None:
        """System messages joined, for APIs (Anthropic) that take them as a parameter."""
        parts = [m.content for m in self.messages if m.role == "system"]
        return "\n\n".join(parts) if parts else None

    @property
    def turns(self) -> list[ChatMessage]:
        return [m for m in self.messages if m.role != "system"]

    @classmethod
    def parse(cls, messages: Any, options: dict[str, Any]) -> ChatRequest:
        """Validate task arguments, turning pydantic's report into one ``InvalidRequest``."""
        try:
            return cls.model_validate({"messages": messages, **options})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'request'}: {err['msg']}" for err in exc.errors()
            )
            raise InvalidRequest(f"invalid chat request: {problems}") from None


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


class ChatResult(BaseModel):
    content: str
    provider: str
    model: str
    finish_reason: str
    usage: Usage
    attempts: list[Attempt]
    latency_ms: float
