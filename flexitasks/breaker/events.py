"""Events on the breaker channel: their schema and the one function that parses them.

Pub/sub is an untrusted input: anything that does not validate is reported as
``InvalidEvent`` (counted and logged by the subscriber), never applied, never fatal.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from flexitasks.breaker.store import BreakerState


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    v: Literal[1]
    provider: str = Field(min_length=1)
    generation: int = Field(ge=0)
    at: float


class TransitionEvent(_Event):
    type: Literal["transition"]
    state: BreakerState
    previous: BreakerState | None = None
    open_until: float = 0.0
    probe_until: float = 0.0
    probe_owner: str | None = None
    reason: str = ""


class FailureEvent(_Event):
    """The first counted failure of a window: from now on every process reports its
    successes (the failure rate needs them) and admits calls through the store while the
    provider looks failing. Later failures are learned from the store's own answers."""

    type: Literal["failure"]
    failures: int = Field(ge=0)
    calls: int = Field(ge=0)


BreakerEvent = Annotated[TransitionEvent | FailureEvent, Field(discriminator="type")]
_adapter: TypeAdapter[TransitionEvent | FailureEvent] = TypeAdapter(BreakerEvent)


class InvalidEvent(ValueError):
    """A message on the channel that is not a valid breaker event."""


def parse_event(data: bytes | str) -> TransitionEvent | FailureEvent:
    try:
        return _adapter.validate_json(data, strict=True)
    except (ValueError, TypeError) as exc:  # ValidationError is a ValueError
        preview = (data if isinstance(data, str) else data.decode("utf-8", "replace"))[:120]
        reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else type(exc).__name__
        raise InvalidEvent(f"invalid breaker event ({reason}): {preview!r}") from None
