"""A flood of chat tasks through two workers against two faulty fake providers, accounted
call for call: shared by ``tests/test_e2e_flood.py`` (10,000 tasks, in CI) and
``make soak`` (``python tests/flood.py 100000``).

Every task must end in an answer or ``AllProvidersFailed``, none may be missing, and each
provider's own counters (requests, by status, by fault) must equal what the results'
``attempts`` say was sent to it. The faults are random per request (the fake provider's
``mix``): 500s, 429s with and without Retry-After, latency, and streams cut short.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flexitasks.config import Settings

FAULTS = [
    {"chance": 0.03, "status": 500},
    {"chance": 0.03, "status": 429},                       # without Retry-After: backoff, then fail over
    {"chance": 0.004, "status": 429, "retry_after": 0.3},  # a short Retry-After: a fleet-wide cool-down
    {"chance": 0.03, "mode": "truncate"},                  # the stream cut before its end
    {"chance": 0.05, "latency": 0.03},
]
MESSAGES = [{"role": "user", "content": "Summarise this ticket"}]


def flood_settings(base: Settings, queue: str) -> Settings:
    """The tests' settings for a flood: a queue of its own, no Celery retries (so a failed
    run is final and its attempts are all in its error), short backoffs, a long deadline."""
    data = base.model_dump()
    data["celery"].update(queue=queue, max_task_retries=0)
    data["retry"].update(same_provider_backoff=0.01, rate_limit_backoff=0.01, retry_after_wait_max=1.0,
                         request_timeout=600.0)
    data["breaker"].update(failure_threshold=50, recovery_timeout=0.5, max_recovery_timeout=1.0)
    for provider in data["providers"]:  # a loaded CI machine must not turn answers into timeouts
        provider.update(timeout=30.0, first_token_timeout=10.0, stall_timeout=10.0)
    return Settings.model_validate(data)


def category(attempt: dict[str, Any]) -> str | None:
    """What the provider saw of one attempt: ``ok``, ``500``, ``429``, ``truncate``; None: no call."""
    if attempt["outcome"] == "skipped":
        return None
    if attempt["outcome"] == "ok":
        return "ok"
    error = attempt.get("error") or ""
    for status in ("500", "429"):
        if f" {status}" in error.split(":", 1)[0]:
            return status
    if error.startswith("truncated"):
        return "truncate"
    if error.startswith("timeout"):
        # Only a loaded machine gets here (a delay fault is 30 ms, the first-token limit 10 s): the
        # provider answered 200 in full, the call had given up on it. Counted as what the provider saw.
        return "ok"
    return "other:" + error.split(":", 1)[0]


@dataclass
class Tally:
    answered: int = 0
    failed: int = 0
    other: list[str] = field(default_factory=list)  # any other outcome: a test failure
    calls: dict[str, collections.Counter[str]] = field(default_factory=lambda: collections.defaultdict(
        collections.Counter))

    def add(self, attempts: Iterable[dict[str, Any]]) -> None:
        for a in attempts:
            cat = category(a)
            if cat is not None:
                self.calls[a["provider"]][cat] += 1


def seen_by(stats: dict[str, Any]) -> collections.Counter[str]:
    """The same categories from a fake provider's own counters."""
    by_status, by_fault = stats["by_status"], stats["by_fault"]
    cut = by_fault.get("truncate", 0)
    seen = collections.Counter({"ok": by_status.get("200", 0) - cut, "500": by_status.get("500", 0),
                                "429": by_status.get("429", 0), "truncate": cut})
    seen["total"] = stats["requests"]
    return +seen


def expected(calls: collections.Counter[str]) -> collections.Counter[str]:
    out = collections.Counter(calls)
    out["total"] = sum(calls.values())
    return +out


def collect(app: Any, ids: list[str], timeout: float) -> Tally:
    """Every task's final state, read straight from the result backend (one MGET per batch)."""
    from flexitasks.errors import AllProvidersFailed

    tally, pending, deadline = Tally(), set(ids), time.monotonic() + timeout
    backend = app.backend
    while pending and time.monotonic() < deadline:
        batch = list(pending)
        for start in range(0, len(batch), 1000):
            chunk = batch[start:start + 1000]
            values = backend.mget([backend.get_key_for_task(t) for t in chunk])
            for task_id, raw in zip(chunk, values, strict=True):
                if raw is None:
                    continue
                meta = backend.decode_result(raw)
                if meta["status"] not in ("SUCCESS", "FAILURE"):
                    continue
                pending.discard(task_id)
                if meta["status"] == "SUCCESS":
                    tally.answered += 1
                    tally.add(meta["result"]["attempts"])
                    continue
                exc = backend.exception_to_python(meta["result"])
                if isinstance(exc, AllProvidersFailed):
                    tally.failed += 1
                    tally.add(exc.attempts)
                else:
                    tally.other.append(f"{task_id}: {type(exc).__name__}: {exc}")
        if pending:
            time.sleep(0.5)
    tally.other += [f"{t}: no result (lost)" for t in sorted(pending)]
    return tally
