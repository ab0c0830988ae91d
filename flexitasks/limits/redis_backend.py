"""The fleet-wide limiter backend: one EVALSHA of ``limit.lua`` per check or finish.

Owns the Python side of ``limit.lua``: keys, ARGV, loading the script once
(``register_script``: EVALSHA, re-loaded on NOSCRIPT), decoding its reply and turning
every Redis failure into a ``LimiterError``. The rules are in the Lua (mirrored by
``machine.py``); this file decides nothing and never falls back on its own.

Keys (in the same Redis as the breakers; each write refreshes a TTL):

Named by ``flexitasks/keys.py`` (hash-tagged per provider, like the breaker's: one
EVALSHA's keys share a Redis Cluster slot):

* ``{key_prefix:provider}:limit`` hash: ``rpm_tat``, ``tpm_tat``, ``skip:<limit>``
  refusal counters (TTL 1 day);
* ``{key_prefix:provider}:lease`` sorted set: lease id scored by its expiry
  (TTL the lease's own + 60 s).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import redis

from flexitasks.keys import by_slot, provider_key
from flexitasks.limits.backend import LimiterError
from flexitasks.limits.machine import LimitView, Verdict
from flexitasks.limits.policy import LIMITS, LimitPolicy
from flexitasks.script_clock import clock_arg, script_source

__all__ = ["RedisLimiterBackend"]


def _num(value: float | int | None) -> str:
    """A limit for ARGV: '' when off; floats as repr() so Lua reads the exact double."""
    return "" if value is None else repr(float(value))


@functools.lru_cache(maxsize=128)
def _policy_argv(policy: LimitPolicy) -> tuple[str, ...]:
    return (_num(policy.rpm), _num(policy.burst), _num(policy.tpm), _num(policy.max_in_flight),
            _num(policy.lease_ttl))


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _view(rpm_tat: Any, tpm_tat: Any, in_flight: Any, now: Any, *skips: Any) -> LimitView:
    return LimitView(now=float(_text(now)), rpm_tat=float(_text(rpm_tat)), tpm_tat=float(_text(tpm_tat)),
                     in_flight=int(in_flight),
                     skips={name: int(n) for name, n in zip(LIMITS, skips, strict=True) if int(n)})


class RedisLimiterBackend:
    """``LimiterBackend`` over Redis; thread-safe (no local state).

    ``clock`` replaces Redis ``TIME`` (tests only: a fleet must share one clock, which
    only Redis ``TIME`` gives).
    """

    def __init__(self, client: redis.Redis, key_prefix: str, clock: Callable[[], float] | None = None) -> None:
        if not key_prefix:
            raise ValueError("key_prefix must be non-empty")
        self._prefix = key_prefix
        self._client = client
        self._clock = clock
        self._script = client.register_script(script_source("flexitasks.limits", "limit.lua"))

    def keys(self, provider: str) -> list[str]:
        return [provider_key(self._prefix, provider, "limit"), provider_key(self._prefix, provider, "lease")]

    def check(self, provider: str, policy: LimitPolicy, tokens: int, lease: str, max_wait: float = 0.0) -> Verdict:
        argv = ["check", clock_arg(self._clock), *_policy_argv(policy), lease, str(int(tokens)), repr(float(max_wait))]
        row = self._eval("check", provider, self.keys(provider), argv)
        allowed, reserved, *waits = row[:5]
        return Verdict(
            allowed=int(allowed) == 1,
            booked=int(allowed) == 2,
            reserved=int(reserved),
            waits={name: float(_text(w)) for name, w in zip(LIMITS, waits, strict=True) if _text(w)},
            view=_view(*row[5:]),
        )

    def finish(self, provider: str, policy: LimitPolicy, lease: str, reserved: int, actual: int | None) -> LimitView:
        argv = ["finish", clock_arg(self._clock), *_policy_argv(policy), lease, str(int(reserved)),
                "" if actual is None else str(int(actual))]
        row = self._eval("finish", provider, self.keys(provider), argv)
        return _view(*row[5:])

    def peek(self, providers: list[str]) -> dict[str, LimitView]:
        names = list(dict.fromkeys(providers))
        if not names:
            return {}
        views: dict[str, LimitView] = {}
        for group in by_slot(self._client, self._prefix, names):  # one round trip per cluster slot
            keys = [k for name in group for k in self.keys(name)]
            rows = self._eval("peek", ",".join(group), keys, ["peek", clock_arg(self._clock)])
            views.update((name, _view(*row)) for name, row in zip(group, rows, strict=True))
        return {name: views[name] for name in names}

    def _eval(self, op: str, provider: str, keys: list[str], argv: Sequence[str]) -> Any:
        try:
            return self._script(keys=keys, args=list(argv))
        except redis.RedisError as exc:
            raise LimiterError(
                f"limiter {op} for provider {provider!r} failed in Redis ({type(exc).__name__}: {exc})"
            ) from exc
