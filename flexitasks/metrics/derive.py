"""What one task run counts: pure functions from its attempts to metric observations.

The router records every call of a run in ``attempts`` (on the result, and on the
exception of a failed run); everything fleet metrics need is derived from that here,
after the run, so no hook sits inside the router or the adapters. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CALL_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
FIRST_TOKEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
HISTOGRAM_BUCKETS = {
    "call_duration_seconds": CALL_DURATION_BUCKETS,
    "time_to_first_token_seconds": FIRST_TOKEN_BUCKETS,
}


@dataclass(frozen=True)
class Price:
    """US dollars per million tokens, as providers publish them."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1_000_000


@dataclass
class Observations:
    """Increments of one run: ``counters[(name, labels)]`` and histogram samples."""

    counters: dict[tuple[str, tuple[str, ...]], float] = field(default_factory=dict)
    samples: list[tuple[str, str, float]] = field(default_factory=list)  # (histogram, provider, seconds)
    recent: dict[str, float] = field(default_factory=dict)  # dashboard rates: field -> increment

    def add(self, name: str, labels: tuple[str, ...], value: float = 1.0) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0.0) + value


def attempt_kind(attempt: Mapping[str, Any]) -> str:
    """The error class of an attempt: ``unavailable`` from ``"unavailable 500: ..."``,
    ``circuit_open`` / ``cooling_down`` for a skip, ``""`` for a success."""
    if attempt.get("outcome") == "ok":
        return ""
    error = str(attempt.get("error") or "")
    if attempt.get("outcome") == "skipped":
        return "cooling_down" if error.startswith("cooling") else "circuit_open"
    head = error.split(":", 1)[0].split(" ", 1)[0].strip()
    return head or "unknown"


def failovers(attempts: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """Each move from one provider to another within a run (a skip counts as a move)."""
    moves: list[tuple[str, str]] = []
    previous: str | None = None
    for attempt in attempts:
        name = str(attempt.get("provider"))
        if previous is not None and name != previous:
            moves.append((previous, name))
        previous = name
    return moves


def observe_run(
    outcome: str,
    attempts: list[Mapping[str, Any]],
    *,
    provider: str | None = None,
    usage: Mapping[str, Any] | None = None,
    prices: Mapping[str, Price] | None = None,
) -> tuple[Observations, float | None]:
    """Observations of one run, and its cost in USD (None: no price for the provider that
    answered). ``outcome``: ok | retried | failed | rejected | invalid."""
    obs = Observations()
    obs.add("requests_total", (outcome,))
    obs.recent[f"requests|{outcome}"] = 1
    for attempt in attempts:
        name = str(attempt.get("provider"))
        result = str(attempt.get("outcome"))
        obs.add("provider_calls_total", (name, result, attempt_kind(attempt)))
        obs.recent[f"calls|{name}|{result}"] = obs.recent.get(f"calls|{name}|{result}", 0) + 1
        if result == "skipped":
            continue
        obs.samples.append(("call_duration_seconds", name, float(attempt.get("latency_ms") or 0.0) / 1000))
        first = attempt.get("first_token_ms")
        if first is not None:
            obs.samples.append(("time_to_first_token_seconds", name, float(first) / 1000))
    for src, dst in failovers(attempts):
        obs.add("failovers_total", (src, dst))
        obs.recent[f"failovers|{src}|{dst}"] = obs.recent.get(f"failovers|{src}|{dst}", 0) + 1
    cost: float | None = None
    if provider is not None and usage is not None:
        tokens_in, tokens_out = int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)
        obs.add("tokens_total", (provider, "input"), tokens_in)
        obs.add("tokens_total", (provider, "output"), tokens_out)
        price = (prices or {}).get(provider)
        if price is not None:
            cost = price.cost(tokens_in, tokens_out)
            obs.add("cost_usd_total", (provider,), cost)
    return obs, cost
