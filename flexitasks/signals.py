"""flexitasks' own Celery signals, declared in one place (as ``celery.signals`` does).

``breaker_transition``: sent in the process that made a breaker transition (a task's
call, a probe, remote control), with ``sender`` = the provider's name and
``result`` = the store's ``StoreResult``. ``worker.py`` turns it into a Celery event;
connect to it for anything else a transition should trigger
(``breaker_transition.connect(fn, sender="openai")`` for one provider).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery.utils.dispatch import Signal

if TYPE_CHECKING:
    from flexitasks.breaker.store import StoreResult

breaker_transition = Signal(name="breaker_transition", providing_args={"result"})


def announce(result: StoreResult) -> None:
    """Send ``breaker_transition`` (Celery's ``Signal.send`` logs a failing receiver and goes on)."""
    breaker_transition.send(sender=result.snapshot.provider, result=result)
