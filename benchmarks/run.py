"""Entry point: ``python -m benchmarks.run [--quick] [--only NAME[,NAME]]``.

Starts the two fake providers, runs the selected measurements one after the other
(each prints its tables as soon as it is done), writes them to ``benchmarks/results.md``
and deletes every Redis key of the run. ``results.md`` keeps one section per
measurement, so ``--only`` replaces just the sections it ran; each section says the
command, the date, the machine's load and how long it took. Log records (the product's
warnings included) go to a file, named at the end, to keep the tables readable.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    CONFIG_PATH,
    KEY_PREFIX,
    LOG_FILE,
    REDIS_URL,
    call_path,
    concurrency,
    cost,
    limits,
    outage_probes,
    overhead,
    propagation,
    scale,
    streaming,
    wasted_calls,
)
from benchmarks.common import LOG_FORMAT, Fakes, Table, delete_prefix, log, redis_client

BENCHMARKS: dict[str, tuple[str, Callable[..., list[Table]]]] = {
    "propagation": ("Propagation", propagation.run),
    "scale": ("Propagation at 64 and 128 processes, memory per process", scale.run),
    "wasted_calls": ("Wasted calls", wasted_calls.run),
    "outage_probes": ("Probes during an outage", outage_probes.run),
    "cost": ("Redis cost per call", cost.run),
    "limits": ("Fleet-wide limits", limits.run),
    "streaming": ("Streaming to the caller and asyncio producers", streaming.run),
    "overhead": ("Overhead against hand-written tasks", overhead.run),
    "call_path": ("The per-call path in one process", call_path.run),
    "concurrency": ("Concurrency: many slow calls per threads-pool worker", concurrency.run),
}
RESULTS = Path(__file__).resolve().parent / "results.md"
HEADER = """# flexitasks benchmarks

Latest figures of `python -m benchmarks.run` (code in `benchmarks/`; `make bench`). Each
section below is replaced when its measurement runs again; it names the command, the
date and the machine's load while it ran. flexitasks and its anchors (raw Redis pub/sub,
pybreaker in memory per process, pybreaker with `CircuitRedisStorage`) run side by side,
same load, same thresholds (failure_threshold 5, failure_rate_threshold 0.5).
"""


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _section(name: str, title: str, tables: list[Table], command: str, started: str, took: float,
             load: str) -> str:
    body = "\n".join(t.markdown() for t in tables)
    return (
        f"<!-- begin {name} -->\n## {title}\n\n"
        f"`{command}` — {started}, {os.cpu_count()} cores ({platform.python_implementation()} "
        f"{platform.python_version()}), load average {load}, {took:.0f} s\n\n{body}<!-- end {name} -->\n"
    )


def write_results(sections: dict[str, str], path: Path = RESULTS) -> None:
    """Replace the sections that ran, keep the others, in the canonical order."""
    old = path.read_text() if path.exists() else ""
    kept = {
        m.group(1): m.group(0) + "\n"
        for m in re.finditer(r"<!-- begin (\w+) -->.*?<!-- end \1 -->", old, flags=re.S)
    }
    kept.update(sections)
    extra = [name for name in kept if name not in BENCHMARKS]  # written by hand (e.g. profiles): kept as they are
    parts = [HEADER] + [kept[name] for name in BENCHMARKS if name in kept] + [kept[name] for name in extra]
    path.write_text("\n".join(p.rstrip("\n") + "\n" for p in parts))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer transitions and runs, a 20 s outage")
    parser.add_argument("--only", metavar="NAME", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS.name}")
    args = parser.parse_args(argv)
    names = list(BENCHMARKS) if not args.only else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + (
        f" --only {','.join(names)}" if args.only else "")

    log_file = LOG_FILE
    logging.basicConfig(filename=log_file, level=logging.WARNING, format=LOG_FORMAT)
    log(f"{command}: Redis {REDIS_URL}, key prefix {KEY_PREFIX}, config {CONFIG_PATH}")
    client = redis_client()
    client.ping()
    fakes = Fakes().start()
    sections: dict[str, str] = {}
    total = time.monotonic()
    try:
        for name in names:
            title, bench = BENCHMARKS[name]
            started, load0, t0 = time.strftime("%Y-%m-%d %H:%M %Z"), _load(), time.monotonic()
            tables = bench(fakes, quick=args.quick)
            took = time.monotonic() - t0
            for table in tables:
                table.render()
            sections[name] = _section(name, title, tables, command, started, took, f"{load0} -> {_load()}")
            log(f"{name}: {took:.0f} s")
    finally:
        fakes.stop()
        deleted = delete_prefix(client)
        client.close()
        log(f"deleted {deleted} Redis keys under {KEY_PREFIX}:*; total {time.monotonic() - total:.0f} s; "
            f"log records in {log_file}")
    if sections and not args.no_write:
        write_results(sections)
        log(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
