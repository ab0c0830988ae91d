"""This process's local copy of every breaker's state (``flexitasks.sync`` feeds it).

The success path reads only this mirror, so a healthy provider costs no Redis round
trip. It is fed by full snapshots (authoritative: they replace everything) and by
events (applied only if newer than what we hold, by generation). Times are the
store's clock; ``now()`` converts the local clock using the offset seen at the last
snapshot. Thread-safe; no I/O.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from flexitasks.breaker.schema import BreakerSnapshot, BreakerState, FailureEvent, TransitionEvent


@dataclass(frozen=True)
class View:
    """What this process believes about one provider, and when it learned it."""

    snapshot: BreakerSnapshot
    applied_at: float  # store time
    failures_seen_at: float = 0.0  # store time of the newest known failure in the window


class Mirror:
    def __init__(self, providers: list[str], clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._offset = 0.0
        self._views: dict[str, View] = {p: View(BreakerSnapshot(provider=p), 0.0) for p in providers}
        self.listeners: list[Callable[[str, View], None]] = []

    def now(self) -> float:
        return self._clock() + self._offset

    def get(self, provider: str) -> View:
        view = self._views.get(provider)
        return view if view is not None else View(BreakerSnapshot(provider=provider), 0.0)

    def views(self) -> dict[str, View]:
        return dict(self._views)

    def load(self, snapshots: Mapping[str, BreakerSnapshot]) -> None:
        """Replace every view with the authoritative snapshot (after (re)subscribing)."""
        changed = []
        with self._lock:
            for snap in snapshots.values():
                if snap.now:
                    self._offset = snap.now - self._clock()
                old = self._views.get(snap.provider)
                seen = snap.now if snap.failures else 0.0
                same = old is not None and (old.snapshot.state, old.snapshot.generation) == (
                    snap.state,
                    snap.generation,
                )
                applied_at = old.applied_at if same and old is not None else (snap.now or self.now())
                self._views[snap.provider] = View(snap, applied_at, seen)
                if not same:
                    changed.append(snap.provider)
        self._notify(changed)

    def apply(self, snap: BreakerSnapshot) -> bool:
        """A snapshot returned by one of our own store calls: newer generations win."""
        with self._lock:
            old = self._views.get(snap.provider)
            if old is not None and snap.generation < old.snapshot.generation:
                return False
            seen = snap.now if snap.failures else (old.failures_seen_at if old else 0.0)
            changed = old is None or old.snapshot.generation != snap.generation
            applied_at = snap.now or self.now() if changed or old is None else old.applied_at
            self._views[snap.provider] = View(snap, applied_at, seen)
        if changed:
            self._notify([snap.provider])
        return changed

    def apply_event(self, event: TransitionEvent | FailureEvent) -> bool:
        """Apply an event unless it is stale; returns whether anything changed."""
        with self._lock:
            if event.provider not in self._views:
                return False  # not a provider of ours: never grows the mirror
            old = self._views[event.provider]
            if isinstance(event, FailureEvent):
                if event.generation < old.snapshot.generation:
                    return False
                self._views[event.provider] = View(old.snapshot.after_event(event), old.applied_at, event.at)
                return True  # counts only: no state change to tell listeners about
            if event.generation <= old.snapshot.generation:
                return False
            seen = 0.0 if event.state is BreakerState.CLOSED else old.failures_seen_at
            self._views[event.provider] = View(old.snapshot.after_event(event), self.now(), seen)
        self._notify([event.provider])
        return True

    def _notify(self, providers: list[str]) -> None:
        for provider in providers:
            for listener in self.listeners:
                listener(provider, self._views[provider])
