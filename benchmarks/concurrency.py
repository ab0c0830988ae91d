"""Concurrency: many slow calls in one threads-pool worker, against the hand-written task (issue 8).

For C = 4, 32, 128, 256: one ``celery worker --pool threads --concurrency C`` for
``chat_task``, one for the plain Celery task calling the OpenAI SDK, not streamed
(``benchmarks/plain_tasks.py``), and one for a plain task that only sleeps as long as a
call takes (Celery's own ceiling on this machine, queue ``nap``); both fakes answer after 1 s (their ``latency`` fault),
so the ceiling is C calls/s. A producer keeps C tasks in flight (C threads, each sending
a task and waiting for its result) for a fixed time per variant; calls/s counts the
answers that arrive after a ramp-up, p50/p99 is the producer's round trip, and the
worker's RSS is read from /proc idle (after start) and loaded (at the end of the window,
C calls in flight). Workers, their start-up and statistics come from ``overhead.py``.

Measured in a spawned process, as ``streaming.py``: the producer side needs the default
app with the overhead config, which another benchmark of the run may already have set.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Fakes, Table, log, num, percentile, redis_client

LEVELS = (4, 32, 128, 256)
LATENCY = 1.0  # seconds every fake call takes: the limit is C calls/s
RAMP = 2.0  # seconds of each window not counted: the first answers of C tasks sent at once
NAP = "plain task that only sleeps (Celery's ceiling)"
SPLIT = "`chat_task`, two workers of C/2 threads"
NAP_QUEUE, SPLIT_QUEUE = "nap", "ft-split"


@dataclass
class Row:
    name: str
    concurrency: int
    seconds: float
    answers: list[tuple[float, float]] = field(default_factory=list)  # (finished at, round trip)
    failed: int = 0
    cpu_s: float = 0.0
    queue: str = ""  # the broker queue its tasks go to
    depth: list[tuple[int, int]] = field(default_factory=list)  # (waiting in the broker, held by the worker)
    idle_rss: float = float("nan")
    loaded_rss: float = float("nan")

    def counted(self, start: float) -> list[float]:
        lo, hi = start + RAMP, start + self.seconds
        return [rt for at, rt in self.answers if lo <= at <= hi]

    def rate(self, start: float) -> float:
        return len(self.counted(start)) / (self.seconds - RAMP)


def keep_in_flight(send: Callable[[], Any], row: Row, on_loaded: Callable[[], None]) -> float:
    """``row.concurrency`` callers in a closed loop for ``row.seconds``; returns the start time.
    ``on_loaded`` runs just before the window ends, every caller still waiting on a call."""
    lock = threading.Lock()
    start = time.monotonic()
    end = start + row.seconds

    def caller() -> None:
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                send().get(timeout=120)
            except Exception:  # counted, the loop goes on
                with lock:
                    row.failed += 1
                continue
            t1 = time.monotonic()
            with lock:
                row.answers.append((t1, t1 - t0))

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(row.concurrency)]
    for t in threads:
        t.start()
    time.sleep(max(end - time.monotonic() - 0.5, 0.0))
    on_loaded()
    for t in threads:
        t.join()
    return start


class BrokerDepth:
    """Samples, every 0.25 s while a row runs, the messages waiting in its Redis queue and
    those its worker holds (delivered, not yet acked: kombu's ``unacked`` hash; one worker
    is measured at a time): tasks waiting in the broker while the worker holds fewer than C
    mean its consumer fetches too slowly."""

    def __init__(self, row: Row) -> None:
        self.row, self._stop = row, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        client = redis_client()
        while not self._stop.wait(0.25):
            pipe = client.pipeline(transaction=False)
            pipe.llen(self.row.queue)
            pipe.hlen("unacked")
            waiting, held = pipe.execute()
            self.row.depth.append((int(waiting), int(held)))

    def __enter__(self) -> BrokerDepth:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _measure(quick: bool) -> list[Table]:
    from benchmarks.overhead import Variant, _variants, rss_mb, start_worker, stop_worker, wait_ready, worker_cpu

    variants, _ = _variants()  # sets the producer's app to the overhead config (request deadline 120 s)
    from benchmarks import plain_tasks  # after _variants has set the environment it reads at import
    from benchmarks.overhead import MESSAGES
    from flexitasks import app, chat_task

    nap = Variant(NAP, lambda: plain_tasks.nap.apply_async((LATENCY,), queue=NAP_QUEUE))
    split = Variant(SPLIT, lambda: chat_task.apply_async((MESSAGES,), queue=SPLIT_QUEUE))
    seconds = 8.0 if quick else 15.0
    rows: list[tuple[Row, ...]] = []
    for c in LEVELS:
        # (variant, the queue its workers consume, its workers: app, name, threads), one variant measured at a time
        plan: list[tuple[Variant, str, list[tuple[str, str, int]]]] = [
            (variants[0], app.settings.celery.queue, [("flexitasks", f"ft-conc{c}", c)]),
            (variants[1], plain_tasks.QUEUE, [("benchmarks.plain_tasks", f"plain-conc{c}", c)]),
            (nap, NAP_QUEUE, [("benchmarks.plain_tasks", f"nap-conc{c}", c)]),
        ]
        if c == max(LEVELS):
            plan.append((split, SPLIT_QUEUE, [("flexitasks", f"ft-split{i}-conc{c}", c // 2) for i in (1, 2)]))
        log(f"concurrency C={c}: {len(plan)} variants, --pool threads, {seconds:g} s each")
        group = tuple(Row(v.name, c, seconds, queue=queue) for v, queue, _ in plan)
        workers = [[start_worker(app_name, name, "-Q", queue, pool="threads", concurrency=n)
                    for app_name, name, n in specs] for _, queue, specs in plan]
        try:
            for procs, (v, _, _) in zip(workers, plan, strict=True):
                for proc in procs:
                    wait_ready(proc, v.send, children=0)
            time.sleep(1.0)
            for procs, (v, _, _), row in zip(workers, plan, group, strict=True):
                row.idle_rss = sum(rss_mb(p.pid) for p in procs)
                warm = Row(row.name, c, min(3.0, seconds))  # opens the worker's and producer's connections
                keep_in_flight(v.send, warm, lambda: None)
            for procs, (v, _, _), row in zip(workers, plan, group, strict=True):
                cpu0 = sum(worker_cpu(p) for p in procs)

                def loaded(procs: list[Any] = procs, row: Row = row) -> None:
                    row.loaded_rss = sum(rss_mb(p.pid) for p in procs)

                with BrokerDepth(row):
                    start = keep_in_flight(v.send, row, loaded)
                row.cpu_s = sum(worker_cpu(p) for p in procs) - cpu0
                row.answers = [(at - start, rt) for at, rt in row.answers]  # times relative to the start
                log(f"  {row.name}: {row.rate(0.0):.1f} calls/s, {row.failed} failed")
        finally:
            for procs in workers:
                for proc in procs:
                    stop_worker(proc)
        rows.append(group)
    return [_table(rows, seconds)]


def _depth(row: Row) -> str:
    if not row.depth:
        return "-"
    waiting, held = zip(*row.depth, strict=True)
    return f"{percentile(waiting, 50):.0f} ({max(waiting)}) / {percentile(held, 50):.0f} ({max(held)})"


def _table(rows: list[tuple[Row, ...]], seconds: float) -> Table:
    table = Table(
        f"Concurrency: one --pool threads worker, C calls in flight, the fake answering in {LATENCY:g} s",
        ["C", "task", "calls/s", "of the limit C/1 s", "vs hand-written", "p50 ms", "p99 ms", "failed",
         "worker CPU ms / call", "worker RSS MB idle -> loaded", "RSS KB / call in flight",
         "waiting in the broker / held by the worker, median (max)"],
    )
    for group in rows:
        base = group[1].rate(0.0)
        for row in group:
            rate, rts, limit = row.rate(0.0), row.counted(0.0), row.concurrency / LATENCY
            calls = len(row.answers)
            per_call = (row.loaded_rss - row.idle_rss) * 1024 / row.concurrency
            table.add(row.concurrency, row.name, num(rate), f"{rate / limit:.2f}",
                      f"{rate / base:.2f}x" if base else "-",
                      num(percentile(rts, 50) * 1000, 0), num(percentile(rts, 99) * 1000, 0), row.failed,
                      num(row.cpu_s * 1000 / calls, 2) if calls else "-",
                      f"{num(row.idle_rss)} -> {num(row.loaded_rss)}", num(per_call, 0), _depth(row))
    table.notes += [
        f"Per row: a worker of its own (`celery worker --pool threads --concurrency C`), warmed for 3 s, then "
        f"C producer threads in a closed loop for {seconds:g} s; calls/s and p50/p99 count the answers after "
        f"the first {RAMP:g} s. Both fakes answer every call after {LATENCY:g} s (a 21-piece answer).",
        "Target (issue 8): `chat_task` >= 0.8 of the limit at C = 128 and 256, and ahead of the hand-written "
        "task at the same C. The producer, both fakes, Redis and the worker share the machine's cores.",
        "RSS of the worker process (threads pool: one process) from /proc, idle after start and with C calls "
        "in flight at the end of the window.",
        f"{NAP}: a plain Celery task that only sleeps {LATENCY:g} s (no HTTP, no provider): what Celery's "
        "threads pool, the Redis broker and this producer reach at C on this machine, the ceiling of any "
        "task that waits on a provider.",
        "Waiting / held: tasks in the worker's Redis queue not yet fetched, and tasks its worker holds "
        "(fetched, not yet acked), sampled every 0.25 s of the window. Tasks waiting while the worker holds "
        "fewer than C: its one consumer thread (a Redis round trip per message fetched, and one more to note "
        "it unacked, each needing the GIL back from the busy threads) is what limits the rate.",
        f"{SPLIT} (largest C only): the same C calls in flight, served by two `--pool threads` workers of "
        "C/2 threads each on one queue (one process per core); CPU and RSS summed over both.",
    ]
    return table


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    fakes.reset()
    for admin in fakes.admin.values():
        admin.set_fault(latency=LATENCY)
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
            return child.submit(_measure, quick).result()
    finally:
        fakes.reset()
