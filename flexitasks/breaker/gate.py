"""The router's view of the breakers: admit a call, report how it went.

Decides from the local mirror whenever it can (a CLOSED, healthy provider costs no
store call) and goes to the store only to report failures, to report successes
(batched) while the window holds failures, to admit calls while the provider looks
failing, and to compete for the half-open probe. Holds no lock across a provider call.
One gate per process, shared by every thread of it (``--pool threads`` runs hundreds of
calls at once): its own counters sit behind a lock, and the probe belongs to one call,
not to the process: each admission has its own owner (process id + a call number), so
one probe is one call fleet-wide. When the shared store is unreachable it keeps serving
with a local-only store (same thresholds) until the sync layer says the store is back.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from flexitasks.breaker.memory_store import MemoryBreakerStore
from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.permit import Permit
from flexitasks.breaker.redis_store import BreakerStoreError
from flexitasks.breaker.store import BreakerPolicy, BreakerState, BreakerStore, StoreResult
from flexitasks.failures import ProviderFailure

log = logging.getLogger(__name__)

TransitionListener = Callable[[StoreResult], None]

SUCCESS_FLUSH_INTERVAL = 0.25
"""Seconds between reports of successes while the window holds failures; a failure
report always carries the successes before it. Batching keeps a flapping provider's
success path at one store call per process per interval, not one per call."""


class FleetGate:
    def __init__(
        self,
        shared: BreakerStore,
        mirror: Mirror,
        policies: dict[str, BreakerPolicy],
        on_transition: TransitionListener | None = None,
    ) -> None:
        self.shared = shared
        self.local = MemoryBreakerStore()
        self.mirror = mirror
        self.policies = policies
        self.on_transition = on_transition
        self._lock = threading.Lock()  # guards the fields below, never held across I/O
        self._pending: dict[str, int] = {}  # successes not yet reported, per provider
        self._flushed_at: dict[str, float] = {}
        self.degraded = True  # until the sync layer has read the shared state once
        self._warned = False
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._calls = itertools.count(1)  # next() is atomic under the GIL

    def _call_owner(self) -> str:
        """The owner a probe would have: this call's, not the process's."""
        return f"{self.owner}:{next(self._calls)}"

    # -- store access with the degraded fallback -------------------------------------------
    def _store(self) -> BreakerStore:
        return self.local if self.degraded else self.shared

    def set_degraded(self, degraded: bool) -> None:
        with self._lock:
            if degraded and not self.degraded:
                log.warning("breaker store unreachable: serving with local-only breakers until it is back")
                self._warned = True
            elif not degraded and self.degraded:
                if self._warned:
                    log.warning("breaker store reachable again: shared breakers resumed")
                self.local = MemoryBreakerStore()
            self.degraded = degraded

    def _call(self, op: Callable[[BreakerStore], StoreResult]) -> StoreResult:
        try:
            result = op(self._store())
        except BreakerStoreError:
            self.set_degraded(True)
            result = op(self.local)
        if not self.degraded:
            self.mirror.apply(result.snapshot)
        if result.transitioned and self.on_transition is not None:
            self.on_transition(result)
        return result

    # -- BreakerGate ----------------------------------------------------------------------------
    def admit(self, provider: str, may_probe: bool = True) -> Permit | None:
        if self.degraded:
            return self._admit_by_store(provider)
        view = self.mirror.get(provider).snapshot
        now = self.mirror.now()
        if view.state is BreakerState.CLOSED and self._looks_failing(provider):
            return self._admit_by_store(provider)  # it may open any moment: ask Redis, atomically
        if view.state in (BreakerState.CLOSED, BreakerState.DISABLED):
            return Permit(provider)
        if view.state is BreakerState.FORCED_OPEN:
            return None
        if view.state is BreakerState.OPEN and now < view.open_until:
            return None
        probing = view.probe_owner is not None and now < view.probe_until  # by some call, maybe ours
        if view.state is BreakerState.HALF_OPEN and probing:
            return None
        if not may_probe:  # this call would be the probe, with too little time for a first token
            return None
        return self._admit_by_store(provider)

    def _admit_by_store(self, provider: str) -> Permit | None:
        policy = self.policies[provider]
        owner = self._call_owner()
        result = self._call(lambda s: s.admit(provider, policy, owner))
        if not result.granted:
            return None
        probe = result.holds_probe(owner)
        return Permit(provider, probe=probe, owner=owner if probe else None)

    def succeeded(self, permit: Permit) -> None:
        name = permit.provider
        policy = self.policies[name]
        if permit.probe and permit.owner is not None:
            owner = permit.owner
            self._call(lambda s: s.probe_result(name, policy, owner, True))
        elif self.degraded or self._window_has_failures(name):
            with self._lock:
                self._pending[name] = self._pending.get(name, 0) + 1
                due = time.monotonic() - self._flushed_at.get(name, 0.0) >= SUCCESS_FLUSH_INTERVAL
            if due:
                pending = self._take_pending(name)
                if pending:
                    self._call(lambda s: s.record_success(name, policy, pending))

    def failed(self, permit: Permit, failure: ProviderFailure) -> None:
        name = permit.provider
        policy = self.policies[name]
        if permit.probe and permit.owner is not None:
            if failure.ours:  # cut by our own limit: no verdict; the token expires, then someone probes
                return
            ok = not failure.blames_provider  # it answered: alive, if unhappy with us
            owner = permit.owner
            self._call(lambda s: s.probe_result(name, policy, owner, ok))
        elif failure.blames_provider:
            successes = self._take_pending(name)  # the rate must see them before this failure
            self._call(lambda s: s.record_failure(name, policy, successes))

    def _take_pending(self, provider: str) -> int:
        with self._lock:
            self._flushed_at[provider] = time.monotonic()
            return self._pending.pop(provider, 0)

    def cool_down(self, provider: str, seconds: float) -> None:
        policy = self.policies[provider]
        self._call(lambda s: s.cool_down(provider, policy, seconds))

    def reopens_in(self, provider: str) -> float | None:
        """Seconds left of a provider's Retry-After cool-down (None: not cooling down),
        so a request with nowhere else to go can wait for it rather than fail."""
        s = self.mirror.get(provider).snapshot
        if s.state is BreakerState.OPEN and s.reason in ("retry_after", "retry_after_extended"):
            return max(s.open_until - self.mirror.now(), 0.0)
        return None

    def _looks_failing(self, provider: str) -> bool:
        """The window holds failures at a rate that would open the breaker once enough of
        them come: calls are then admitted by the store, not the mirror, so no process keeps
        calling for the milliseconds pub/sub takes to say the breaker opened elsewhere.
        Costs one store call per call only while the provider is failing; the store's
        answers keep this process's counts fresh."""
        view = self.mirror.get(provider).snapshot
        rate = (view.failures + 1) / (view.calls + 1)
        return rate >= self.policies[provider].failure_rate_threshold and self._window_has_failures(provider)

    def _window_has_failures(self, provider: str) -> bool:
        """Successes only matter for the failure rate while failures are in the window;
        a healthy provider's successes are never sent (zero store calls per call)."""
        view = self.mirror.get(provider)
        window = self.policies[provider].window
        return view.snapshot.failures > 0 and self.mirror.now() - view.failures_seen_at < window
