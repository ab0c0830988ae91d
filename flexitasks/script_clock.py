"""The clock and exact numbers of the Lua scripts (breaker transitions, limits): one rule for both.

The scripts read Redis ``TIME`` when the clock argument is empty; tests and the reference
model inject a clock, whose reading is sent exactly (``repr`` keeps every digit). The Lua
side of the rule (``clock``, ``finite``, ``fmt``) is ``script_clock.lua``, a prelude that
``script_source`` puts before each script. No Redis: imports only the standard library.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from collections.abc import Callable

PRELUDE = "script_clock.lua"


@functools.cache
def script_source(package: str, name: str) -> str:
    """The Lua script ``name`` of ``package`` as Redis runs it: the shared prelude first,
    so both scripts read the clock and write floats by one copy of the rule (read once)."""
    files = importlib.resources.files
    prelude = files("flexitasks").joinpath(PRELUDE).read_text("utf-8")
    return prelude + "\n" + files(package).joinpath(name).read_text("utf-8")


def clock_arg(clock: Callable[[], float] | None) -> str:
    """'' lets the script read Redis TIME; an injected clock is sent exactly."""
    if clock is None:
        return ""
    now = float(clock())
    if not math.isfinite(now):
        raise ValueError(f"clock returned {now!r}")
    return repr(now)
