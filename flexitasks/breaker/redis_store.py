"""The fleet-shared breaker store: one Lua script in Redis per operation call.

This module owns the Python side of ``transition.lua``: building KEYS/ARGV, loading
the script once (``register_script`` -> EVALSHA, re-loaded on NOSCRIPT), decoding the
flat reply into a ``StoreResult`` and turning every Redis failure into a
``BreakerStoreError`` that names the operation and provider. The rules themselves are
in the Lua (mirrored by ``machine.py``); this file decides nothing. It must not know
about Celery, HTTP or providers' SDKs, nor fall back to memory on its own: degrading
to ``MemoryBreakerStore`` is the caller's decision.

Key layout (every key written has a TTL, refreshed on each write):

Keys are named by ``flexitasks/keys.py``, hash-tagged per provider so both keys of one
EVALSHA share a Redis Cluster slot:

* ``{key_prefix:provider}:breaker`` hash: state, generation, open_until,
  reopen_count, probe_owner ('' = none), probe_until, probe_successes, reason
  (no TTL: operator states never expire, generations never restart);
* ``{key_prefix:provider}:window`` hash: ``w`` (window length of the buckets),
  ``f:<bucket>``/``c:<bucket>`` failure/call counters, bucket =
  floor(now / (window / 60)) (TTL ceil(window) + 1 s).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

import redis

from flexitasks.breaker import machine
from flexitasks.breaker.schema import BreakerSnapshot, BreakerState
from flexitasks.breaker.store import BreakerPolicy, OperationStore, StoreResult
from flexitasks.errors import FlexitasksError
from flexitasks.keys import by_slot, provider_key
from flexitasks.script_clock import clock_arg, script_source

__all__ = ["BreakerStoreError", "InvalidBreakerOperation", "RedisBreakerStore"]

_BADARG = "BREAKER_BADARG"


class BreakerStoreError(FlexitasksError):
    """The breaker store could not carry out an operation (Redis down, script error...).

    The message names the operation and provider; ``op``/``provider`` carry them for
    code, and the Redis exception is chained as ``__cause__``. Callers typically
    degrade to ``MemoryBreakerStore`` on this error.
    """

    def __init__(self, message: str, *, op: str | None = None, provider: str | None = None) -> None:
        super().__init__(message)
        self.op = op
        self.provider = provider


class InvalidBreakerOperation(BreakerStoreError, ValueError):
    """A malformed call (unknown op, bad argument or policy): a bug, never retry it."""


@functools.lru_cache(maxsize=128)
def _policy_argv(policy: BreakerPolicy) -> tuple[str, ...]:
    """ARGV[6..13]; floats as repr() so Lua's tonumber reads back the exact double."""
    return (
        str(policy.failure_threshold),
        repr(float(policy.failure_rate_threshold)),
        repr(float(policy.window)),
        repr(float(policy.recovery_timeout)),
        repr(float(policy.max_recovery_timeout)),
        str(policy.success_threshold),
        repr(float(policy.jitter)),
        repr(float(policy.probe_ttl)),
    )


def _decode(provider: str, row: Sequence[Any]) -> StoreResult:
    """The script's flat reply: granted, transitioned, previous, then the snapshot's
    ``REPLY_FIELDS`` (transition.lua's ``REPLY``)."""
    granted, transitioned, previous, *fields = row
    previous_s = previous.decode("utf-8") if isinstance(previous, bytes) else str(previous)
    return StoreResult(
        snapshot=BreakerSnapshot.from_reply(provider, fields),
        transitioned=bool(int(transitioned)),
        previous=BreakerState(previous_s) if previous_s else None,
        granted=bool(int(granted)),
    )


class RedisBreakerStore(OperationStore):
    """``BreakerStore`` over Redis; safe to share between threads (no local state).

    ``clock`` replaces Redis ``TIME`` (tests only: every process of a fleet must use
    the same clock, which only Redis ``TIME`` gives). ``rng`` draws the jitter: one
    draw per call of an operation that ``draws_jitter``, sent in ARGV.
    """

    def __init__(
        self,
        client: redis.Redis,
        key_prefix: str,
        channel: str,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
        event_secret: str | None = None,
    ) -> None:
        if not key_prefix:
            raise ValueError("key_prefix must be non-empty")
        if not channel:
            raise ValueError("channel must be non-empty")
        self._client = client
        self._prefix = key_prefix
        self._channel = channel
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._secret = event_secret or ""  # signs the events the script publishes; ARGV only, never stored
        self._script = client.register_script(script_source("flexitasks.breaker", "transition.lua"))

    # ------------------------------------------------------------ keys

    def state_key(self, provider: str) -> str:
        return provider_key(self._prefix, provider, "breaker")

    def window_key(self, provider: str) -> str:
        return provider_key(self._prefix, provider, "window")

    # ------------------------------------------------------------ BreakerStore

    def snapshot(self, providers: list[str]) -> dict[str, BreakerSnapshot]:
        """All providers' snapshots, ``now`` = store time: one round trip on a single Redis
        (read atomically), one per slot on a cluster (each provider's read atomic)."""
        names = list(dict.fromkeys(providers))
        if not names:
            return {}
        label = ",".join(names)
        try:
            for name in names:
                self._check_provider(name)
            now = clock_arg(self._clock)
        except ValueError as exc:
            raise InvalidBreakerOperation(
                f"breaker snapshot of {label!r}: {exc}", op="snapshot", provider=label
            ) from None
        found: dict[str, BreakerSnapshot] = {}
        for group in by_slot(self._client, self._prefix, names):
            keys = [key for name in group for key in (self.state_key(name), self.window_key(name))]
            rows = self._eval("snapshot", label, keys, ["snapshot", now])
            try:
                found.update((name, _decode(name, row).snapshot) for name, row in zip(group, rows, strict=True))
            except (ValueError, TypeError) as exc:
                raise BreakerStoreError(
                    f"breaker snapshot of {label!r}: unreadable reply from Redis: {exc}",
                    op="snapshot",
                    provider=label,
                ) from exc
        return {name: found[name] for name in names}

    # ------------------------------------------------------------ plumbing

    @staticmethod
    def _check_provider(provider: str) -> None:
        if not isinstance(provider, str) or not provider:
            raise ValueError(f"provider must be a non-empty str, got {provider!r}")

    def run(self, provider: str, policy: BreakerPolicy, op: machine.Operation) -> StoreResult:
        """Validate in Python (a bad call is a ValueError here, not a script error), then EVALSHA."""
        try:
            self._check_provider(provider)
            machine.validate_policy(policy)
            op.validate()
            now = clock_arg(self._clock)
        except (ValueError, TypeError) as exc:
            raise InvalidBreakerOperation(
                f"breaker {op.name} for provider {provider!r}: {exc}", op=op.name, provider=provider
            ) from None
        rand = self._rng.random() if op.draws_jitter else 0.0
        args = list(op.script_args())
        argv = [op.name, now, repr(rand), provider, self._channel, *_policy_argv(policy),
                *args, *[""] * (2 - len(args)), self._secret]
        row = self._eval(op.name, provider, [self.state_key(provider), self.window_key(provider)], argv)
        try:
            return _decode(provider, row)
        except (ValueError, TypeError) as exc:
            raise BreakerStoreError(
                f"breaker {op.name} for provider {provider!r}: unreadable reply from Redis: {exc}",
                op=op.name,
                provider=provider,
            ) from exc

    def reply_fields(self) -> list[str]:
        """The names of the script's reply fields, in order (checked against the schema)."""
        rows = self._eval("fields", "", [], ["fields"])
        return [r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in rows]

    def _eval(self, op: str, provider: str, keys: list[str], argv: list[str]) -> Any:
        """EVALSHA the script; every Redis error leaves as a BreakerStoreError."""
        try:
            return self._script(keys=keys, args=argv)
        except redis.ResponseError as exc:
            message = str(exc)
            if message.startswith(_BADARG):
                detail = message[len(_BADARG) :].strip()
                raise InvalidBreakerOperation(
                    f"breaker {op} for provider {provider!r} rejected by the script: {detail}",
                    op=op,
                    provider=provider,
                ) from None
            raise BreakerStoreError(
                f"breaker {op} for provider {provider!r} failed in Redis: {message}", op=op, provider=provider
            ) from exc
        except redis.RedisError as exc:
            raise BreakerStoreError(
                f"breaker {op} for provider {provider!r}: Redis unavailable ({type(exc).__name__}: {exc})",
                op=op,
                provider=provider,
            ) from exc
