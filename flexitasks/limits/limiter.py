"""The router's view of the limits: admit a call to a provider, say when it is over.

Owns, per process: the policies, the token estimate of a request, lease ids, the
choice of backend (Redis; this process's memory for a few seconds after Redis fails,
so a Redis outage limits each process rather than stopping the fleet), the last view
of each provider (headroom for balancing, context for a surprising 429). A provider
with no limits is admitted without any store call. Decides nothing about failover.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from flexitasks.limits.backend import LimiterBackend, LimiterError
from flexitasks.limits.machine import LimitView
from flexitasks.limits.memory_backend import MemoryLimiterBackend
from flexitasks.limits.policy import LimitPolicy, policy_of
from flexitasks.limits.redis_backend import RedisLimiterBackend

if TYPE_CHECKING:
    from flexitasks.config import Settings

__all__ = ["IN_FLIGHT_RECHECK", "Limiter", "Refusal", "Slot", "estimate_tokens"]

log = logging.getLogger(__name__)
T = TypeVar("T")

IN_FLIGHT_RECHECK = 1.0
"""Seconds to come back after an in-flight refusal: a lease's expiry is only the latest a
slot frees (a holder that died); calls normally end far sooner."""
FALLBACK_SECONDS = 5.0
"""Seconds served from this process's memory after a Redis failure before Redis is tried again."""
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4  # tokens of role and framing per message
IMAGE_TOKENS = 1000  # providers count an image by its tiles: 765 for 1024x1024 at OpenAI, ~1600 at Anthropic


def estimate_tokens(contents: list[object], max_tokens: int) -> int:
    """Tokens a call may use: its input estimated from its size (~4 characters a token,
    plus framing per message, an image as ``IMAGE_TOKENS``) plus all the output it allows.
    Settlement with the real usage corrects it."""
    chars = sum(_chars(c) for c in contents)
    return math.ceil(chars / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * len(contents) + max_tokens


def _chars(content: object) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: text counts by size, anything else as an image
        return sum(len(t) if isinstance(t := getattr(p, "text", None), str) else IMAGE_TOKENS * CHARS_PER_TOKEN
                   for p in content)
    return len(json.dumps(content, default=str))


@dataclass(frozen=True)
class Slot:
    """A call admitted under a provider's limits; hand it back to ``finished``."""

    provider: str
    lease: str = ""
    reserved: int = 0
    view: LimitView | None = None  # the store's view right after admission (None: unlimited)
    backend: LimiterBackend | None = None  # the backend that admitted it settles it


@dataclass(frozen=True)
class Refusal:
    """A provider over a limit: ``limit`` is the one the attempt names."""

    provider: str
    limit: str
    retry_after: float


class Limiter:
    def __init__(
        self,
        policies: dict[str, LimitPolicy],
        backend: LimiterBackend,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policies = policies
        self.backend = backend
        self.fallback = MemoryLimiterBackend()
        self.clock = clock
        self._fallback_until = 0.0
        self._views: dict[str, tuple[LimitView, float]] = {}  # provider -> (view, our clock then)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._serial = itertools.count(1)

    @classmethod
    def for_settings(cls, settings: Settings) -> Limiter | None:
        """This process's limiter over the configured Redis; None when no provider has a
        limit (then nothing here ever talks to Redis)."""
        policies = {p.name: policy_of(p) for p in settings.providers}
        if not any(p.limited for p in policies.values()):
            return None
        from flexitasks.redis_connect import sync_client

        return cls(policies, RedisLimiterBackend(sync_client(settings.sync), settings.sync.key_prefix))

    @property
    def degraded(self) -> bool:
        """Serving from this process's memory because Redis failed a moment ago."""
        return self.clock() < self._fallback_until

    def limited(self, provider: str) -> bool:
        policy = self.policies.get(provider)
        return policy is not None and policy.limited

    # -- the two calls the router makes ------------------------------------------------------
    def admit(self, provider: str, tokens: int) -> Slot | Refusal:
        """One store step for a limited provider; none for an unlimited one."""
        policy = self.policies.get(provider)
        if policy is None or not policy.limited:
            return Slot(provider)
        lease = f"{self._owner}:{next(self._serial)}"
        backend, verdict = self._step(lambda b: b.check(provider, policy, tokens, lease))
        self._views[provider] = (verdict.view, self.clock())
        if verdict.allowed:
            return Slot(provider, lease, verdict.reserved, verdict.view, backend)
        waits = dict(verdict.waits)
        if "in_flight" in waits:
            waits["in_flight"] = min(waits["in_flight"], IN_FLIGHT_RECHECK)
        return Refusal(provider, verdict.refused[0], max(waits.values()))

    def book(self, provider: str, tokens: int, max_wait: float) -> tuple[float, int] | None:
        """Nowhere else to go: take the provider's next free slot if it comes within
        ``max_wait`` seconds; ``(wait, reserved tokens)``, to be used after the wait through
        ``booked``. None when it cannot be booked: no rpm/tpm limit, an in-flight limit (a
        lease cannot start later), or no slot in time. Booked slots keep waiting requests
        in the order they asked instead of a stampede at every free slot."""
        policy = self.policies.get(provider)
        if policy is None or not policy.limited or policy.max_in_flight is not None or max_wait <= 0:
            return None
        lease = f"{self._owner}:{next(self._serial)}"
        _, verdict = self._step(lambda b: b.check(provider, policy, tokens, lease, max_wait))
        self._views[provider] = (verdict.view, self.clock())
        if verdict.allowed or verdict.booked:
            return verdict.retry_after, verdict.reserved
        return None

    def booked(self, provider: str, reserved: int) -> Slot:
        """The slot a come-back booked (see ``book``), to hand back to ``finished``."""
        return Slot(provider, f"{self._owner}:booked", reserved, None, self.backend)

    def finished(self, slot: Slot, actual_tokens: int | None) -> None:
        """The call is over: release its lease, settle its tokens (None: unknown, the
        reservation stands). No store call for rpm-only or unlimited providers."""
        policy = self.policies.get(slot.provider)
        if policy is None or not policy.needs_finish or slot.backend is None:
            return
        try:
            view = slot.backend.finish(slot.provider, policy, slot.lease, slot.reserved, actual_tokens)
            self._views[slot.provider] = (view, self.clock())
        except LimiterError as exc:  # the lease expires on its own; the reservation stands
            log.warning("limiter: could not settle a call to %s (%s)", slot.provider, exc)

    # -- what others read -------------------------------------------------------------------
    def headroom(self, provider: str) -> float:
        """Free share of the tightest limit, from this process's last view aged to now
        (buckets drain as time passes; no store call). 1.0 when unknown or unlimited."""
        policy = self.policies.get(provider)
        seen = self._views.get(provider)
        if policy is None or not policy.limited or seen is None:
            return 1.0
        view, at = seen
        aged = LimitView(view.now + (self.clock() - at), view.rpm_tat, view.tpm_tat, view.in_flight)
        return aged.headroom(policy)

    def describe(self, provider: str, view: LimitView | None = None) -> str:
        """A view of a provider (default: the last this process saw) in words, for a log line."""
        policy = self.policies.get(provider)
        seen = view or (self._views[provider][0] if provider in self._views else None)
        if policy is None or not policy.limited:
            return "no limits configured"
        if seen is None:
            return "no view yet"
        used = seen.used(policy)
        return ", ".join(f"{name} {used[name]:.1f}/{policy.capacity(name):g} in use" for name in used)

    # -- backend choice ---------------------------------------------------------------------
    def _step(self, op: Callable[[LimiterBackend], T]) -> tuple[LimiterBackend, T]:
        if self.clock() >= self._fallback_until:
            try:
                return self.backend, op(self.backend)
            except LimiterError as exc:
                if self._fallback_until == 0.0 or self.clock() - self._fallback_until > FALLBACK_SECONDS:
                    log.warning("limiter store unreachable (%s): limiting this process alone for now", exc)
                self._fallback_until = self.clock() + FALLBACK_SECONDS
        return self.fallback, op(self.fallback)

