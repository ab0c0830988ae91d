"""The clock argument of the Lua scripts (breaker transitions, limits): one rule for both.

The scripts read Redis ``TIME`` when the argument is empty; tests and the reference model
inject a clock, whose reading is sent exactly (``repr`` keeps every digit). Pure: imports
only the standard library.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def clock_arg(clock: Callable[[], float] | None) -> str:
    """'' lets the script read Redis TIME; an injected clock is sent exactly."""
    if clock is None:
        return ""
    now = float(clock())
    if not math.isfinite(now):
        raise ValueError(f"clock returned {now!r}")
    return repr(now)
