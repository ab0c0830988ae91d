"""Streaming to the caller and asyncio producers (issue 10), through a real worker pool.

A ``celery worker --concurrency 4`` (prefork) on the benchmark's config serves
``flexitasks.chat`` from the OpenAI-kind fake; this process is the producer.

- **First-token lag**: from the worker receiving a call's first text from the provider
  (the wall-clock time its sink stamps on the attempt entry) to ``stream_chat`` yielding
  it here (same machine, same clock). The fake pauses 50 ms after its first piece, so
  the first delta is the first token alone. One stream at a time, then 16 at once
  (threads). Target: p50 <= 20 ms.
- **asyncio**: 1,000 concurrent ``achat`` awaits (and 200 ``astream_chat``) in one event
  loop, while a ticker sleeping 5 ms records how late the loop wakes it: the loop's
  worst stall.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks import BASE_URLS, CONFIG_PATH, PRIMARY
from benchmarks.common import Fakes, Table, ms, percentile
from flexitasks.fake_provider import FakeProviderAdmin
from flexitasks.harness import stop_process

ROOT = Path(__file__).resolve().parent.parent
QUEUE_DEADLINE = 120.0
"""request_timeout of this measurement's config: 1,000 calls queued at once for 4 children
must not expire in the queue (the shared config's 5 s suits one call at a time)."""
MESSAGES = [{"role": "user", "content": "Stream me a short answer about Redis streams please"}]


NODE = f"bench-stream-{os.getpid()}"


def _config() -> Path:
    """The benchmark's config with ``request_timeout`` = ``QUEUE_DEADLINE``."""
    path = CONFIG_PATH.parent / "streaming.toml"
    text = CONFIG_PATH.read_text()
    path.write_text(re.sub(r"(?m)^request_timeout = .*$", f"request_timeout = {QUEUE_DEADLINE}", text))
    return path


def _start_worker() -> subprocess.Popen[bytes]:
    env = {**os.environ, "FLEXITASKS_CONFIG": str(_config())}
    log_file = open(CONFIG_PATH.parent / "streaming-worker.log", "ab")  # noqa: SIM115  (owned by the process)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "flexitasks", "worker", "--pool", "prefork", "--concurrency", "4",
         "-n", f"{NODE}@%h", "--loglevel", "WARNING", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
    )


def _one_stream() -> tuple[float, float, float]:
    """(first-token lag, call -> first delta, call -> done) of one streamed call, seconds."""
    from flexitasks import stream_chat

    t0 = time.time()
    stream = stream_chat(MESSAGES, timeout=30)
    lag = first = float("nan")
    for event in stream:
        if event["type"] == "delta" and first != first:  # NaN: the first delta
            now = time.time()
            first = now - t0
            if stream.replay.text_received_at is not None:
                lag = now - stream.replay.text_received_at
    return lag, first, time.time() - t0


def _first_token(admin: FakeProviderAdmin, n: int) -> Table:
    from flexitasks import chat_task

    table = Table(
        "First-token lag: worker receives the first text -> stream_chat yields it (ms)",
        ["streams at once", "calls", "lag p50", "lag p90", "lag p99", "lag max", "call -> first delta p50",
         "call -> done p50", "not streamed: call -> result p50"],
    )
    admin.set_fault(stall_after_chunks=1, stall_seconds=0.05)
    for _ in range(10):  # warm: every child's HTTP pool and Redis connections
        _one_stream()
    plain = []
    for _ in range(n):
        t0 = time.time()
        chat_task.delay(MESSAGES).get(timeout=30)
        plain.append(time.time() - t0)
    for concurrent in (1, 16):
        with ThreadPoolExecutor(concurrent) as pool:
            runs = list(pool.map(lambda _: _one_stream(), range(n)))
        lags, firsts, dones = ([r[i] for r in runs] for i in range(3))
        table.add(concurrent, n, ms(percentile(lags, 50)), ms(percentile(lags, 90)), ms(percentile(lags, 99)),
                  ms(max(lags)), ms(percentile(firsts, 50)), ms(percentile(dones, 50)),
                  ms(percentile(plain, 50)) if concurrent == 1 else "-")
    admin.reset()
    table.notes.append("the fake pauses 50 ms after its first piece; worker: --concurrency 4 prefork; "
                       "16 at once: producer threads, so calls also queue for the 4 children")
    return table


async def _concurrently(n: int, streamed: bool) -> tuple[float, float, float, int]:
    """(seconds for all, worst loop stall, p99 loop stall, answers) of n concurrent calls."""
    from flexitasks import achat, astream_chat

    async def one_stream(i: int) -> Any:
        async for event in astream_chat([{"role": "user", "content": f"q {i}"}], timeout=120):
            if event["type"] == "done":
                return event["result"]
        return None

    await achat(MESSAGES, timeout=60)  # warm: clients, the send thread
    if streamed:  # warm the stream pool's connections too: a serving app has them open
        await asyncio.gather(*(one_stream(i) for i in range(n)))
    stalls: list[float] = []
    running = True

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while running:
            t = loop.time()
            await asyncio.sleep(0.005)
            stalls.append(max(loop.time() - t - 0.005, 0.0))

    tick = asyncio.ensure_future(ticker())
    t0 = time.monotonic()
    calls = (one_stream(i) if streamed else achat([{"role": "user", "content": f"q {i}"}], timeout=120)
             for i in range(n))
    results = await asyncio.gather(*calls)
    took = time.monotonic() - t0
    running = False
    await tick
    answered = sum(1 for i, r in enumerate(results) if r and r["content"] == f"{PRIMARY}: q {i}")
    return took, max(stalls), percentile(stalls, 99), answered


_SYNC_PRODUCER = """
import sys
import flexitasks
n = int(sys.argv[1])
sent = [flexitasks.chat_task.delay([{"role": "user", "content": f"q {i}"}]) for i in range(n)]
print(sum(1 for i, r in enumerate(sent) if r.get(timeout=120)["content"] == f"primary: q {i}"))
"""


async def _ticker_beside(n: int) -> tuple[float, float, float, int]:
    """The same n calls made by another process (plain chat_task.delay/get): the loop here
    only ticks, so its stalls are the machine's, not flexitasks'."""
    env = {**os.environ, "FLEXITASKS_CONFIG": str(_config())}
    stalls: list[float] = []
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _SYNC_PRODUCER, str(n), cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE)
    reading = asyncio.ensure_future(proc.communicate())
    while not reading.done():
        t = loop.time()
        await asyncio.sleep(0.005)
        stalls.append(max(loop.time() - t - 0.005, 0.0))
    out, _ = await reading
    return time.monotonic() - t0, max(stalls), percentile(stalls, 99), int(out.strip() or 0)


def _asyncio(n_achat: int, n_stream: int) -> Table:
    table = Table("asyncio: concurrent awaits in one event loop",
                  ["calls", "what", "answered", "all done in (s)", "calls/s", "loop worst stall (ms)",
                   "loop stall p99 (ms)"])
    took, worst, p99, answered = asyncio.run(_ticker_beside(n_achat))
    table.add(n_achat, "baseline: another process makes the calls, this loop only ticks", answered,
              f"{took:.1f}", f"{n_achat / took:.0f}", ms(worst, 1), ms(p99, 1))
    for n, streamed in ((n_achat, False), (n_stream, True)):
        took, worst, p99, answered = asyncio.run(_concurrently(n, streamed))
        table.add(n, "astream_chat" if streamed else "achat", answered, f"{took:.1f}", f"{n / took:.0f}",
                  ms(worst, 1), ms(p99, 1))
    table.notes.append("stall: how late a 5 ms sleep wakes up while the calls are in flight; the worker pool "
                       "(4 children) sets the pace, the loop only waits; the baseline row is the same load with "
                       "no flexitasks call in this process (what the machine alone does to the loop)")
    return table


def run(fakes: Fakes, quick: bool = False) -> list[Table]:
    """Measured in a spawned process: the producer side needs the default app with this
    measurement's settings, and another benchmark of the run may configure it otherwise."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(_measure, quick).result()


def _measure(quick: bool) -> list[Table]:
    import flexitasks
    from flexitasks.config import load_settings

    flexitasks.app.use_settings(load_settings(_config()))
    admin = FakeProviderAdmin(BASE_URLS[PRIMARY].removesuffix("/v1"))
    proc = _start_worker()
    try:
        _wait_for_worker(proc)
        return [_first_token(admin, 50 if quick else 200), _asyncio(1000, 100 if quick else 200)]
    finally:
        stop_process(proc, timeout=30)
        admin.close()


def _wait_for_worker(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import flexitasks

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the benchmark's worker exited ({proc.returncode}); see {CONFIG_PATH.parent}")
        replies = flexitasks.app.control.ping(timeout=0.5) or []
        if any(name.startswith(NODE + "@") for reply in replies for name in reply):
            return
    raise RuntimeError(f"the benchmark's worker did not answer within {timeout:.0f}s")
