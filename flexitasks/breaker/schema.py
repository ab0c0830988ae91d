"""The one schema of breaker state, and the events that carry it on the channel.

``BreakerSnapshot`` is the only place the state's fields are listed. Every other shape
is converted from or to it here: the Lua script's reply (``from_reply``; the script's
``REPLY`` list must match ``REPLY_FIELDS``, a test checks it), the events on the
channel (``after_event``, ``to_event``, ``to_failure_event``), a process's brief
view (``to_view``) and a control command's reply (``to_brief``). Pub/sub is an
untrusted input: anything that does not validate is ``InvalidEvent`` (counted and
logged by the subscriber), never applied, never fatal.
No I/O; knows nothing of Redis, Celery or providers.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"  # operator: skipped until reset
    DISABLED = "disabled"  # operator: never trips, failures not counted


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# How a field of the script's reply is read, by the field's annotation ('' = none).
_FROM_REPLY: dict[str, Callable[[Any], Any]] = {
    "BreakerState": lambda v: BreakerState(_text(v)),
    "int": int,
    "float": lambda v: float(_text(v)),
    "str": _text,
    "str | None": lambda v: _text(v) or None,
}


@dataclasses.dataclass(frozen=True)
class BreakerSnapshot:
    """Authoritative state of one provider at ``now`` (store time)."""

    provider: str
    state: BreakerState = BreakerState.CLOSED
    generation: int = 0
    open_until: float = 0.0  # OPEN: when a probe may start
    reopen_count: int = 0  # consecutive re-opens, drives the exponential recovery
    probe_owner: str | None = None
    probe_until: float = 0.0  # HALF_OPEN: when the probe token expires
    probe_successes: int = 0
    failures: int = 0  # in the rolling window
    calls: int = 0  # in the rolling window (failures + reported successes)
    reason: str = ""  # why the last transition happened ("threshold", "probe_failed", "retry_after", "operator", ...)
    now: float = 0.0  # store time when the snapshot was read

    REPLY_FIELDS: ClassVar[tuple[str, ...]]
    """The script's reply after (granted, transitioned, previous): every field but provider."""

    @classmethod
    def from_reply(cls, provider: str, values: Sequence[Any]) -> BreakerSnapshot:
        """From the script's flat reply (bytes or numbers, floats as strings)."""
        if len(values) != len(cls.REPLY_FIELDS):
            raise ValueError(f"expected {len(cls.REPLY_FIELDS)} fields, got {len(values)}")
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        read = {name: _FROM_REPLY[str(kinds[name])](v) for name, v in zip(cls.REPLY_FIELDS, values, strict=True)}
        return cls(provider=provider, **read)

    def after_event(self, event: TransitionEvent | FailureEvent) -> BreakerSnapshot:
        """This snapshot as the event says it now is (the caller checks the generation)."""
        if isinstance(event, FailureEvent):
            return dataclasses.replace(self, failures=event.failures, calls=event.calls)
        closed = event.state is BreakerState.CLOSED
        return dataclasses.replace(
            self,
            state=event.state,
            generation=event.generation,
            open_until=event.open_until,
            probe_until=event.probe_until,
            probe_owner=event.probe_owner,
            reason=event.reason,
            failures=0 if closed else self.failures,
            calls=0 if closed else self.calls,
            now=event.at,
        )

    def to_event(self, previous: BreakerState | None) -> dict[str, object]:
        """The transition event announcing this state (the script publishes the same JSON)."""
        return {
            "v": 1,
            "type": "transition",
            "provider": self.provider,
            "state": self.state.value,
            "previous": previous.value if previous is not None else None,
            "generation": self.generation,
            "open_until": self.open_until,
            "probe_until": self.probe_until,
            "probe_owner": self.probe_owner,
            "reason": self.reason,
            "at": self.now,
        }

    def to_failure_event(self) -> dict[str, object]:
        """The event announcing a window's first failure."""
        return {
            "v": 1,
            "type": "failure",
            "provider": self.provider,
            "generation": self.generation,
            "failures": self.failures,
            "calls": self.calls,
            "at": self.now,
        }

    def to_view(self, applied_at: float) -> dict[str, object]:
        """What a process reports of it (``flexitasks status``, ``inspect stats``)."""
        return {"state": self.state.value, "generation": self.generation, "applied_at": applied_at}

    def to_brief(self) -> dict[str, object]:
        """What a control command (``breaker_trip`` and the like) replies beside its summary."""
        return {"provider": self.provider, "state": self.state.value, "generation": self.generation}

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        return d


BreakerSnapshot.REPLY_FIELDS = tuple(f.name for f in dataclasses.fields(BreakerSnapshot) if f.name != "provider")


# ---------------------------------------------------------------- events


class _Event(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    v: Literal[1]
    deployment: str | None = None  # the sender's key_prefix (absent from older senders)
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
