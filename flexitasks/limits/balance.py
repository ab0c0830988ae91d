"""Which provider of one priority goes first: weighted, preferring headroom.

Pure: given providers already in priority order, it reorders each run of equal
priority by a weighted random draw (Efraimidis-Spirakis: key ``u ** (1 / w)``, highest
first), with ``w = weight x headroom``, so over many requests each takes a share of
first tries in proportion to its weight, shifted toward the one with room under its
limits. Priorities are never reordered: failover still goes down them.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flexitasks.config import ProviderSettings

__all__ = ["MIN_HEADROOM", "order"]

MIN_HEADROOM = 0.02
"""A provider that looks full still gets a few first tries: its view may be stale,
and a try costs only a skipped attempt."""


def order(
    providers: Sequence[ProviderSettings], headroom: Callable[[str], float], rng: random.Random
) -> list[ProviderSettings]:
    out: list[ProviderSettings] = []
    for _, group in itertools.groupby(providers, key=lambda p: p.priority):
        same = list(group)
        if len(same) > 1:
            keys = {p.name: rng.random() ** (1.0 / (p.weight * max(headroom(p.name), MIN_HEADROOM))) for p in same}
            same.sort(key=lambda p: keys[p.name], reverse=True)
        out += same
    return out
