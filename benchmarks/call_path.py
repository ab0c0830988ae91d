"""The per-call path in one process, without a worker pool: CPU per call of ``chat_task``
against the hand-written SDK task, through Celery's own tracer (issue 8).

What a prefork child runs for one task, minus the pool: Celery's tracer (``build_tracer``,
the function a child calls per message) around the task body, the result stored in the
real Redis result backend, signals and all; and the bodies alone (``chat_task``'s
validation, routing and provider call; the SDK's ``create()``). Same fake, same 21-piece
answer as ``overhead.py``. CPU is this thread's own (``time.thread_time``), so the fake
provider, Redis and the sync thread are not counted, and the figures move far less
between runs than the worker benchmarks' tasks/s on this shared machine.

Runs in a spawned process (as ``concurrency.py``): it needs the default app on the
overhead config, which another benchmark of the run may already have set.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchmarks.common import Fakes, Table, num

ROUNDS, CALLS, WARM = 9, 300, 200


def _request(task_name: str) -> dict[str, Any]:
    """The request a worker hands its tracer for a first delivery."""
    return {"id": str(uuid.uuid4()), "task": task_name, "headers": {}, "retries": 0, "hostname": "bench@localhost",
            "delivery_info": {"exchange": "", "routing_key": "bench", "priority": 0, "redelivered": False},
            "is_eager": False, "reply_to": None, "correlation_id": None}


def _paths() -> dict[str, Callable[[], Any]]:
    from celery.app.trace import build_tracer

    from benchmarks.overhead import MESSAGES, _variants

    _variants()  # the environment and the default app's settings, as the overhead benchmark's workers
    from benchmarks import plain_tasks
    from flexitasks import app, chat_task
    from flexitasks.models import ChatRequest

    ours, theirs = chat_task._get_current_object(), plain_tasks.sdk._get_current_object()
    trace_ours = build_tracer(ours.name, ours, eager=False, propagate=False, app=app)
    trace_theirs = build_tracer(theirs.name, theirs, eager=False, propagate=False, app=plain_tasks.app)
    router = app.runtime.get().router

    def traced(trace: Callable[..., Any], name: str) -> Callable[[], Any]:
        def call() -> Any:
            request = _request(name)
            retval, failure = trace(request["id"], (MESSAGES,), {}, request)[:2]
            if failure is not None:  # the tracer does not raise (propagate=False): a failed run is no call to count
                raise RuntimeError(f"{name} failed: {failure.exception!r}")
            return retval
        return call

    return {
        "`chat_task` through Celery's tracer": traced(trace_ours, ours.name),
        "hand-written SDK task through Celery's tracer": traced(trace_theirs, theirs.name),
        "`chat_task`'s body: validation, router, provider call": lambda: router.run(
            ChatRequest.parse(MESSAGES, {}, max_bytes=app.settings.requests.max_request_bytes)).model_dump(),
        "hand-written task's body: the SDK's `create()`": lambda: plain_tasks.sdk.run(MESSAGES),
    }


def _measure(rounds: int, calls: int) -> dict[str, list[float]]:
    paths = _paths()
    for call in paths.values():
        for _ in range(WARM):
            call()
    cpu_ms: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):  # interleaved: a slow moment of the machine hits every path alike
        for name, call in paths.items():
            t0 = time.thread_time()
            for _ in range(calls):
                call()
            cpu_ms[name].append((time.thread_time() - t0) * 1000 / calls)
    return cpu_ms


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    fakes.reset()
    rounds, calls = (3, 150) if quick else (ROUNDS, CALLS)
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        cpu_ms = child.submit(_measure, rounds, calls).result()
    table = Table("Call path: CPU ms per call in one thread, through Celery's tracer and the bodies alone",
                  ["what runs", "CPU ms / call, median (min)", "vs the hand-written counterpart"])
    names = list(cpu_ms)
    for i, name in enumerate(names):
        base = statistics.median(cpu_ms[names[i | 1]])  # each row against the hand-written row of its pair
        median = statistics.median(cpu_ms[name])
        table.add(name, f"{num(median, 3)} ({num(min(cpu_ms[name]), 3)})", f"{median / base:.2f}x")
    table.notes += [
        f"{rounds} interleaved rounds of {calls} calls per row, after {WARM} warm-up calls; CPU time of the "
        "calling thread only (`time.thread_time`). Fake at 0 ms, the 21-piece answer of the overhead benchmark.",
        "Through Celery's tracer: what a prefork child runs per task (`build_tracer`), with the result stored in "
        "the real Redis result backend; not counted: the worker's main process (fetch, dispatch, ack) and the "
        "pool's pipe, which the overhead benchmark includes.",
        "Ratios below 1.00x: `chat_task` spends less CPU per call than the hand-written task.",
    ]
    return [table]
