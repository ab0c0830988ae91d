"""One WARNING line per breaker transition, written by the process that made it.

The store tells exactly one caller that *its* call changed the state; that caller (a
worker process through its transition listener, or the CLI) logs it here, so a
transition appears once in the fleet's logs, with what an on-call engineer needs.
"""

from __future__ import annotations

import logging

from flexitasks.breaker.store import StoreResult

log = logging.getLogger("flexitasks.breaker")


def log_transition(result: StoreResult, actor: str | None = None) -> None:
    snap = result.snapshot
    previous = result.previous.value if result.previous else "?"
    by = f" by {actor}" if actor else ""
    log.warning("breaker %s: %s -> %s (reason %s, generation %d)%s", snap.provider, previous,
                snap.state.value, snap.reason or "-", snap.generation, by)
