"""Overhead: ``chat_task`` against the Celery tasks a user would write by hand (issue 8).

Side by side in one run, rounds interleaved (A B C D A B C D ...): ``chat_task`` through
a real ``celery -A flexitasks worker``; a plain Celery task calling the OpenAI SDK, not
streamed and streamed; and a Celery task calling a LiteLLM ``Router`` when ``litellm`` is
installed (``benchmarks/plain_tasks.py``). Every worker is prefork with 4 children, all
call the same fake provider (0 ms latency, its own process) for the same 21-piece answer.

Per variant: tasks/s for a burst of tasks submitted at once (median of the rounds, and
its range), the ratio to the hand-written non-streamed task, p50/p99 round trip with 4
callers in a closed loop, worker CPU milliseconds per call (main process + children,
from /proc), and the RSS of an idle child (after start, before any task) and of a warm
one (after the rounds). The machine is shared: absolute figures are noisy, the ratios
within one interleaved run are what to read.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import API_KEY_ENV, BASE_URLS, CONFIG_PATH, LOG_FILE, PRIMARY, REDIS_URL
from benchmarks.common import Fakes, Table, log, median, num, percentile, ratio

ROOT = Path(__file__).resolve().parent.parent
WORDS = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " \
        "sixteen seventeen eighteen nineteen twenty"
MESSAGES = [{"role": "user", "content": WORDS}]  # the fake answers "primary: " + 20 words: 21 pieces
CHILDREN = 4
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Variant:
    name: str
    send: Callable[[], Any]  # submits one task, returns its AsyncResult
    worker: subprocess.Popen[bytes] | None = None
    rates: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)
    idle_rss: list[float] = field(default_factory=list)
    warm_rss: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------- /proc


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        return [int(p) for p in path.read_text().split()]
    except OSError:
        return []


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def worker_cpu(proc: subprocess.Popen[bytes]) -> float:
    return _cpu_seconds(proc.pid) + sum(_cpu_seconds(c) for c in _children(proc.pid))


def child_rss(proc: subprocess.Popen[bytes]) -> list[float]:
    return [rss_mb(c) for c in _children(proc.pid)]


# ---------------------------------------------------------------------------- workers


def _plain_env() -> dict[str, str]:
    return {
        "PLAIN_BROKER": REDIS_URL,
        "PLAIN_BASE_URL": BASE_URLS[PRIMARY],
        "PLAIN_API_KEY": os.environ[API_KEY_ENV],
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # else it fetches a price list from the network at import
    }


OVERHEAD_CONFIG = CONFIG_PATH.with_name("overhead.toml")


def _overhead_config() -> Path:
    """The run's config with a request deadline long enough for a burst's last task: a
    request's deadline counts from when it was sent, and a burst queues for seconds."""
    text = CONFIG_PATH.read_text()
    OVERHEAD_CONFIG.write_text(text.replace("request_timeout = 5.0", "request_timeout = 120.0"))
    return OVERHEAD_CONFIG


def _env() -> dict[str, str]:
    return {**os.environ, **_plain_env(), "FLEXITASKS_CONFIG": str(OVERHEAD_CONFIG)}


def start_worker(app: str, name: str, *extra: str, pool: str = "prefork",
                 concurrency: int = CHILDREN) -> subprocess.Popen[bytes]:
    out = open(LOG_FILE, "ab")  # noqa: SIM115  (owned by the process)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, "worker", "--pool", pool, "--concurrency", str(concurrency),
         "-n", f"{name}-{os.getpid()}@%h", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
         "--without-heartbeat", *extra],
        cwd=ROOT, env=_env(), stdout=out, stderr=subprocess.STDOUT,
    )


def wait_ready(proc: subprocess.Popen[bytes], send: Callable[[], Any], timeout: float = 90.0,
               children: int = CHILDREN) -> None:
    """Until the worker has its ``children`` (none for the threads pool) and answers a task."""
    deadline = time.monotonic() + timeout
    while len(_children(proc.pid)) < children:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker exited or did not fork its children (code {proc.poll()}); see {LOG_FILE}")
        time.sleep(0.1)
    send().get(timeout=max(deadline - time.monotonic(), 1.0))


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()  # our own child, by handle
        proc.wait()


# ---------------------------------------------------------------------------- measurement


def burst(v: Variant, n: int) -> None:
    """``n`` tasks submitted at once; tasks/s until the last result, worker CPU per call."""
    assert v.worker is not None
    cpu0, t0 = worker_cpu(v.worker), time.perf_counter()
    results = [v.send() for _ in range(n)]
    for r in results:
        r.get(timeout=120)
    elapsed = time.perf_counter() - t0
    v.rates.append(n / elapsed)
    v.cpu_ms.append((worker_cpu(v.worker) - cpu0) * 1000 / n)


def closed_loop(v: Variant, callers: int, calls: int) -> None:
    """``callers`` threads, each sending one task and waiting for it, ``calls`` times."""
    lock = threading.Lock()

    def caller() -> None:
        for _ in range(calls):
            t0 = time.perf_counter()
            v.send().get(timeout=60)
            with lock:
                v.latencies.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _variants() -> tuple[list[Variant], list[str]]:
    os.environ.update(_plain_env())  # read by plain_tasks at import, here as in its worker
    from benchmarks import plain_tasks
    from flexitasks import app, chat_task
    from flexitasks.config import load_settings

    app.use_settings(load_settings(_overhead_config()))  # the producer side of the worker's FLEXITASKS_CONFIG

    notes = []
    variants = [
        Variant("`chat_task` (flexitasks, streamed)", lambda: chat_task.delay(MESSAGES)),
        Variant("plain task + OpenAI SDK, not streamed", lambda: plain_tasks.sdk.delay(MESSAGES)),
        Variant("plain task + OpenAI SDK, streamed", lambda: plain_tasks.sdk_stream.delay(MESSAGES)),
    ]
    if importlib.util.find_spec("litellm") is None:
        notes.append("LiteLLM is not installed (`pip install -e '.[bench]'`): its row is left out.")
    else:
        variants.append(Variant("plain task + LiteLLM `Router`, not streamed",
                                lambda: plain_tasks.litellm_router.delay(MESSAGES)))
    return variants, notes


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    rounds, n, loop_calls = (2, 150, 15) if quick else (3, 400, 40)
    fakes.reset()
    variants, notes = _variants()
    flexi, plain = variants[0], variants[1:]
    log(f"overhead: starting a flexitasks worker and a plain worker, {CHILDREN} prefork children each")
    flexi.worker = start_worker("flexitasks", "ft-overhead")
    plain_worker = start_worker("benchmarks.plain_tasks", "plain-overhead", "-Q", "plain")
    for v in plain:
        v.worker = plain_worker
    try:
        wait_ready(flexi.worker, flexi.send)
        wait_ready(plain_worker, plain[0].send)
        time.sleep(2.0)  # settle: idle means started, nothing running
        flexi.idle_rss = child_rss(flexi.worker)
        plain[0].idle_rss = child_rss(plain_worker)
        for v in variants:  # warm every child of every variant (imports, clients, pools)
            burst(v, 4 * CHILDREN)
            v.rates.clear()
            v.cpu_ms.clear()
        for r in range(rounds):
            for v in variants:
                log(f"overhead round {r + 1}/{rounds}: {v.name}")
                burst(v, n)
                closed_loop(v, CHILDREN, loop_calls)
        flexi.warm_rss = child_rss(flexi.worker)
        plain[0].warm_rss = child_rss(plain_worker)
    finally:
        stop_worker(flexi.worker)
        stop_worker(plain_worker)
    return [_table(variants, rounds, n, loop_calls, notes)]


def _table(variants: list[Variant], rounds: int, n: int, loop_calls: int, notes: list[str]) -> Table:
    base = median(variants[1].rates)
    table = Table(
        f"Overhead: tasks/s side by side ({CHILDREN} prefork children each, fake at 0 ms, a 21-piece answer)",
        ["task", "tasks/s (median, range)", "vs hand-written non-streamed", "p50 ms", "p99 ms",
         "worker CPU ms / call", "idle child RSS MB", "warm child RSS MB"],
    )
    for v in variants:
        rate = median(v.rates)
        spread = f"{num(min(v.rates), 0)}-{num(max(v.rates), 0)}" if v.rates else "-"
        idle = f"{num(median(v.idle_rss))}" if v.idle_rss else "(same worker)"
        warm = f"{num(median(v.warm_rss))}" if v.warm_rss else "(same worker)"
        table.add(v.name, f"{num(rate, 0)} ({spread})", ratio(rate, base),
                  num(percentile(v.latencies, 50) * 1000), num(percentile(v.latencies, 99) * 1000),
                  num(median(v.cpu_ms), 2), idle, warm)
    table.notes += [
        f"{rounds} interleaved rounds; each a burst of {n} tasks submitted at once (tasks/s until the last "
        f"result) and then {CHILDREN} callers in a closed loop, {loop_calls} calls each (p50/p99 round trip).",
        "Worker CPU: user + system time of the worker's main process and children over the burst, per task.",
        "RSS per child from /proc (shared pages counted in each child): idle = after start, before any task; "
        "the plain task variants share one worker.",
        "The machine is shared with other work: absolute figures are noisy; compare the ratios of one run.",
        *notes,
    ]
    return table
