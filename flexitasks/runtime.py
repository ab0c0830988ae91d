"""The per-process objects that serve calls: breaker sync, gate, adapters, router.

How to get Settings here: they are passed in. ``Runtime.build(settings, ...)`` composes
everything below it from the settings it is given; ``ProcessRuntime`` (one per app:
``app.runtime``) holds this process's ``Runtime``, built once per pid so the prefork
main process never hands its HTTP pools or Redis connections to a child.

Who builds it: the worker's bootstep in the main process (``worker.py``), the
``worker_process_init`` signal in each prefork child, and otherwise the first task that
needs it (the threads and solo pools, where no child-init signal fires; a producer
running tasks eagerly).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from flexitasks.breaker.permit import BreakerGate, OpenGate
from flexitasks.config import Settings
from flexitasks.failover.policy import default_policy
from flexitasks.failover.router import Router
from flexitasks.limits.limiter import Limiter
from flexitasks.per_process import PerProcess
from flexitasks.providers import build_adapter
from flexitasks.sync.process import ProcessSync, start_sync


@dataclass
class Runtime:
    settings: Settings
    router: Router
    gate: BreakerGate
    sync: ProcessSync | None  # None: breakers disabled

    @classmethod
    def build(cls, settings: Settings, role: str = "process", node: str | None = None) -> Runtime:
        sync = start_sync(settings, role=role, node=node) if settings.breaker.enabled else None
        gate: BreakerGate = sync.gate if sync is not None else OpenGate()
        router = Router(
            providers=settings.providers,
            adapters={p.name: build_adapter(p) for p in settings.providers},
            gate=gate,
            policy=default_policy(settings.retry),
            request_timeout=settings.retry.request_timeout,
            limiter=Limiter.for_settings(settings),
        )
        return cls(settings, router, gate, sync)

    def stop(self) -> None:
        if self.sync is not None:
            self.sync.stop()


class ProcessRuntime:
    """This process's ``Runtime``: ``start`` says who the process is, ``get`` builds on first use."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings
        self._identity: tuple[int, str, str | None] = (-1, "process", None)  # pid, role, node
        self._holder: PerProcess[Runtime] = PerProcess(self._build)

    def _build(self) -> Runtime:
        pid, role, node = self._identity
        if pid != os.getpid():  # started by a parent: this process was not told who it is
            role, node = "process", None
        return Runtime.build(self._settings(), role=role, node=node)

    def start(self, role: str, node: str | None = None) -> Runtime:
        """Build this process's runtime now, as ``role`` of worker ``node`` (a no-op if built)."""
        if self._holder.existing() is None:
            self._identity = (os.getpid(), role, node)
        return self._holder.get()

    def get(self) -> Runtime:
        return self._holder.get()

    def existing(self) -> Runtime | None:
        """This process's runtime if built (never a parent's)."""
        return self._holder.existing()

    def stop(self) -> None:
        runtime = self._holder.existing()
        if runtime is not None:
            runtime.stop()
