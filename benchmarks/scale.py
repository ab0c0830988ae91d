"""Propagation at 64 and 128 processes, beside raw pub/sub to as many subscribers, with
the memory each process takes.

The same measurement as ``propagation.py`` (its ``_measure``: forked processes that build
their breaker sync exactly as a prefork child does, i.e. 8 workers x 16 children's worth of
subscribers on one Redis), idle workers, 40 transitions per row (20 with ``--quick``, and
64 processes only). Memory is read from /proc after every process is ready: RSS, PSS
(shared pages divided among the processes that map them, the figure that adds up to the
machine's memory) and USS (pages of the process's own).
"""

from __future__ import annotations

from benchmarks.common import Fakes, Table, log, ms, ratio
from benchmarks.propagation import Outcome, _measure, _p

TARGET = 1.3  # flexitasks p99 <= 1.3 x raw pub/sub p99 at 128 processes (issue 14)


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    transitions = 20 if quick else 40
    counts = (64,) if quick else (64, 128)
    outcomes: list[Outcome] = []
    for n in counts:
        for system in ("raw", "flexitasks"):
            log(f"scale: {system}, {n} processes, idle")
            outcomes.append(_measure(system, n, "idle", transitions, fakes, memory=True))
    table = Table(
        f"Propagation at scale: transition -> applied in each process (ms), idle, {transitions} transitions per row",
        ["system", "procs", "samples", "p50", "p99", "max", "all procs p50", "all procs max", "missed",
         "p99 / raw", "RSS MB/proc", "PSS MB/proc", "USS MB/proc"],
    )
    raw = {o.procs: o for o in outcomes if o.system.startswith("redis")}
    verdicts = []
    for o in outcomes:
        base = raw[o.procs]
        mem = o.memory or {}
        p99 = _p(o.latencies, 99)
        table.add(o.system, o.procs, len(o.latencies), ms(_p(o.latencies, 50)), ms(p99), ms(_p(o.latencies, 100)),
                  ms(_p(o.fleet, 50)), ms(_p(o.fleet, 100)), o.missed,
                  "" if o is base else ratio(p99, _p(base.latencies, 99)),
                  f"{mem.get('rss', 0):.1f}", f"{mem.get('pss', 0):.1f}", f"{mem.get('uss', 0):.1f}")
        if o is not base:
            met = p99 <= TARGET * _p(base.latencies, 99) and o.missed == 0
            verdicts.append(f"{o.procs} processes: p99 {ms(p99)} ms vs raw {ms(_p(base.latencies, 99))} ms, "
                            f"missed {o.missed}: {'met' if met else 'NOT met'}")
    table.notes += [
        f"Target at 128 processes: p99 <= {TARGET}x raw pub/sub and no missed transition. " + "; ".join(verdicts)
        + ".",
        "Forked processes (the benchmark's pool, not Celery), each with the sync thread, mirror and router a "
        "prefork child builds; raw rows: one plain redis-py subscriber thread per process. Memory: raw "
        "processes load the same modules (forked from the same parent), so the difference is flexitasks' "
        "per-process state. On this shared 2-core machine the tails move with other work: see the load above.",
    ]
    return [table]
