"""Profile a real ``chat_task`` worker with py-spy: ``python -m benchmarks.profile_worker [SECONDS] [--plain]``.

Starts the fake providers and a ``celery -A flexitasks worker`` (4 prefork children), keeps
it busy with bursts of ``chat_task`` while ``py-spy record`` samples the main process and
its children, then prints the functions holding the most samples, by own time (the
function itself on CPU) and by total time (with what it calls). Needs ``py-spy``
(``pip install -e '.[bench]'``) and the right to trace processes (root, or ptrace allowed).
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import LOG_FILE
from benchmarks.common import Fakes, log
from benchmarks.overhead import _variants, start_worker, stop_worker, wait_ready

TOP = 15


def _frame(frame: str) -> str:
    """``func (pkg/module.py:12)`` -> ``func (pkg/module.py)``: lines differ, functions do not."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def top(raw: Path, n: int = TOP) -> tuple[list[tuple[str, float]], list[tuple[str, float]], int]:
    """Share of samples per function from py-spy's collapsed stacks: own (the function itself
    on CPU, any code) and total (with what it calls, flexitasks' own functions only)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        raw_frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not raw_frames:
            continue
        k = int(count)
        samples += k
        own[_frame(raw_frames[-1])] += k
        for f in {_frame(f) for f in raw_frames if " (flexitasks/" in f}:  # the product's own functions
            total[f] += k
    share = lambda c: [(f, 100.0 * k / samples) for f, k in c.most_common(n)]  # noqa: E731
    return share(own), share(total), samples


def profile(seconds: float = 20.0, plain: bool = False) -> Path:
    """py-spy's raw samples of a busy worker: ``chat_task``'s, or with ``plain`` the
    hand-written SDK task's (``benchmarks/plain_tasks.py``), the same way."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    fakes = Fakes().start()
    variants, _ = _variants()
    flexi = variants[1] if plain else variants[0]
    worker = (start_worker("benchmarks.plain_tasks", "plain-profile", "-Q", "plain") if plain
              else start_worker("flexitasks", "ft-profile"))
    out = LOG_FILE.parent / ("plain-worker-profile.txt" if plain else "worker-profile.txt")
    stop = threading.Event()
    try:
        wait_ready(worker, flexi.send)

        def load() -> None:
            while not stop.is_set():
                for r in [flexi.send() for _ in range(100)]:
                    r.get(timeout=60)

        threading.Thread(target=load, daemon=True).start()
        time.sleep(2)
        log(f"py-spy: sampling worker {worker.pid} and its children for {seconds:g} s")
        subprocess.run([spy, "record", "--pid", str(worker.pid), "--subprocesses", "--duration", str(int(seconds)),
                        "--rate", "250", "--gil", "--nonblocking", "--format", "raw", "--output", str(out)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finally:
        stop.set()
        time.sleep(1)
        stop_worker(worker)
        fakes.stop()
    return out


def markdown(raw: Path) -> str:
    own, total, samples = top(raw)
    lines = [f"{samples} samples of a busy worker (main process + 4 children), taken only from "
             "threads holding the GIL (Python on CPU)", "",
             "| own % | function (any) | | total % | flexitasks function (with callees) |", "|---:|---|---|---:|---|"]
    for (f1, s1), (f2, s2) in zip(own, total, strict=False):
        lines.append(f"| {s1:.1f} | `{f1}` | | {s2:.1f} | `{f2}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--plain"]
    print(markdown(profile(float(args[0]) if args else 20.0, plain="--plain" in sys.argv)))
