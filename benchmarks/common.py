"""Harness shared by the benchmarks: fake providers, process pools, statistics, tables.

Owns what every measurement needs and none decides: the fake providers run as
subprocesses (so their threads never share the coordinator's GIL), worker processes
are forked from a coordinator that has already imported flexitasks (32 processes start
in about a second on 2 cores), and results are ``Table`` objects that ``run.py``
prints and writes to ``results.md``.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import redis

from benchmarks import BASE_URLS, CONFIG_PATH, KEY_PREFIX, PRIMARY, REDIS_URL, SECONDARY
from flexitasks.config import load_settings
from flexitasks.fake_provider import FakeProviderAdmin
from flexitasks.runtime import ProcessRuntime, Runtime

settings = load_settings(CONFIG_PATH)
"""The benchmark's settings (its own file, plus ``FLEXITASKS_REDIS_URL`` in cost.py's child)."""
_runtime = ProcessRuntime(lambda: settings)

CTX = mp.get_context("fork")
LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"


# ---------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def ms(seconds: float, digits: int = 2) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.{digits}f}"


def ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b) or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def num(value: float, digits: int = 1) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


# ---------------------------------------------------------------------------- tables


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        out = [f"#### {self.title}", "", "| " + " | ".join(self.columns) + " |",
               "|" + "|".join("---" for _ in self.columns) + "|"]
        out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {note}" for note in self.notes]
        return "\n".join(out) + "\n"

    def render(self) -> None:
        try:
            from rich.console import Console
            from rich.markup import escape
            from rich.table import Table as RichTable
        except ImportError:  # plain text is enough
            print(self.markdown())
            return
        table = RichTable(title=escape(self.title), title_justify="left", show_lines=False)
        for col in self.columns:
            table.add_column(escape(col), overflow="fold")
        for row in self.rows:
            table.add_row(*(escape(str(cell)) for cell in row))
        console = Console(width=max(120, Console().width))
        console.print(table)
        for note in self.notes:
            console.print(f"  • {escape(note)}", highlight=False)
        console.print()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- fake providers


def _serve_fake(name: str, port: int, stop: Any) -> None:
    from flexitasks.fake_provider import FakeProvider

    with FakeProvider(name=name, port=port):
        stop.wait()


class Fakes:
    """The two fake providers of the config, each in its own process (forked: no import
    cost), so their handler threads never compete for the coordinator's GIL."""

    def __init__(self) -> None:
        self.procs: dict[str, Any] = {}
        self.admin: dict[str, FakeProviderAdmin] = {}
        self._stop = CTX.Event()

    def start(self) -> Fakes:
        for name in (PRIMARY, SECONDARY):
            url = BASE_URLS[name].removesuffix("/v1")
            port = int(url.rsplit(":", 1)[1])
            proc = CTX.Process(target=_serve_fake, args=(name, port, self._stop), daemon=True, name=name)
            proc.start()
            self.procs[name] = proc
            self.admin[name] = FakeProviderAdmin(url)
        deadline = time.monotonic() + 60
        for name, admin in self.admin.items():
            while not admin.health():
                if not self.procs[name].is_alive() or time.monotonic() > deadline:
                    code = self.procs[name].exitcode
                    raise RuntimeError(f"fake provider {name} did not start (exit code {code})")
                time.sleep(0.05)
        return self

    def reset(self) -> None:
        for admin in self.admin.values():
            admin.reset()

    def stop(self) -> None:
        for admin in self.admin.values():
            admin.close()
        self._stop.set()
        for proc in self.procs.values():
            proc.join(10)
            if proc.is_alive():  # our own child, by handle
                proc.terminate()
                proc.join(5)


# ---------------------------------------------------------------------------- Redis


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, socket_timeout=5, socket_connect_timeout=5)


def delete_prefix(client: redis.Redis, prefix: str = KEY_PREFIX) -> int:
    """Delete this run's keys only (``prefix:*``); the DB may hold someone else's."""
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            n += client.delete(*batch)
            batch.clear()
    if batch:
        n += client.delete(*batch)
    return n


# ---------------------------------------------------------------------------- process pools


def _entry(target: Callable[..., None], index: int, conn: Connection, args: tuple[Any, ...]) -> None:
    try:
        target(index, conn, *args)
    except BaseException:  # report, or the coordinator waits for a message that never comes
        with suppress(OSError):
            conn.send(("error", index, traceback.format_exc()))
        raise
    finally:
        conn.close()


class WorkerError(RuntimeError):
    pass


class Pool:
    """``n`` forked workers, each with a duplex pipe to the coordinator.

    Worker protocol: ``target(index, conn, *args)`` sends ``("ready", ...)`` once set up,
    then whatever the benchmark defines; an exception is sent as ``("error", index, tb)``.
    """

    def __init__(self, n: int, target: Callable[..., None], *args: Any) -> None:
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        for i in range(n):
            parent, child = CTX.Pipe()
            proc = CTX.Process(target=_entry, args=(target, i, child, args), daemon=True, name=f"bench-{i}")
            proc.start()
            child.close()
            self.procs.append(proc)
            self.conns.append(parent)

    def send_all(self, message: Any) -> None:
        for conn in self.conns:
            conn.send(message)

    def gather(self, kind: str, timeout: float = 60.0) -> list[Any]:
        """One message of ``kind`` from every worker, in worker order."""
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        index = {id(c): i for i, c in enumerate(self.conns)}
        while len(got) < len(self.conns):
            left = deadline - time.monotonic()
            if left <= 0:
                missing = [i for i in range(len(self.conns)) if i not in got]
                raise WorkerError(f"no {kind!r} from workers {missing} within {timeout}s")
            pending = [c for i, c in enumerate(self.conns) if i not in got]
            for conn in wait(pending, timeout=left):
                i = index[id(conn)]
                try:
                    message = conn.recv()
                except EOFError:
                    raise WorkerError(f"worker {i} exited (code {self.procs[i].exitcode})") from None
                if message[0] == "error":
                    raise WorkerError(f"worker {message[1]} failed:\n{message[2]}")
                if message[0] != kind:
                    raise WorkerError(f"worker {i}: expected {kind!r}, got {message[0]!r}")
                got[i] = message[1] if len(message) == 2 else message[1:]
        return [got[i] for i in range(len(self.conns))]

    def close(self, timeout: float = 10.0) -> None:
        for conn in self.conns:
            with suppress(OSError):
                conn.send(("exit",))
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
        for proc in self.procs:  # only our own children, by handle
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        for conn in self.conns:
            conn.close()


@contextmanager
def pool(n: int, target: Callable[..., None], *args: Any) -> Iterator[Pool]:
    p = Pool(n, target, *args)
    try:
        yield p
    finally:
        p.close()


# ---------------------------------------------------------------------------- worker-side helpers


def worker_runtime(wait_connected: float = 10.0) -> Runtime:
    """Build this process's runtime (breaker sync, gate, router) exactly as a Celery prefork
    child does (``flexitasks.worker``), then wait until its sync holds the snapshot."""
    runtime = _runtime.start(role="worker-child")
    if runtime.sync is None:
        raise RuntimeError("the benchmark needs breakers enabled")
    if not runtime.sync.subscriber.connected.wait(wait_connected):
        raise RuntimeError(f"breaker sync of pid {os.getpid()} not connected after {wait_connected}s")
    return runtime


def worker_sync(wait_connected: float = 10.0) -> Any:
    return worker_runtime(wait_connected).sync


class TimedAdapter:
    """The real adapter; records (wall time, ``label()``) just before each call is sent.

    ``label`` says what the process believed when it admitted the call (``LabelledGate``).
    """

    def __init__(self, inner: Any, label: Callable[[], str] | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.label = label
        self.sends: list[tuple[float, str]] = []

    def complete(self, request: Any, budget: float) -> Any:
        self.sends.append((time.time(), self.label() if self.label is not None else ""))
        return self.inner.complete(request, budget)


class LabelledGate:
    """The process's real ``FleetGate``, noting what this process believed when it admitted
    a call to ``provider``: its mirror's state as admission began, or "probe" for the
    half-open probe. Read at admission, not at send: a call the store admitted just before
    the breaker opened elsewhere is not mistaken for one sent against an OPEN view."""

    def __init__(self, sync: Any, provider: str = PRIMARY) -> None:
        self.inner = sync.gate
        self.mirror = sync.mirror
        self.provider = provider
        self.last = ""

    def admit(self, provider: str, may_probe: bool = True) -> Any:
        before = self.mirror.get(provider).snapshot.state.value
        permit = self.inner.admit(provider, may_probe=may_probe)
        if provider == self.provider and permit is not None:
            self.last = "probe" if permit.probe else before
        return permit

    def label(self) -> str:
        return self.last

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def bench_router(gate: Any, primary: Any | None = None) -> Any:
    """A ``Router`` over the benchmark's providers as ``flexitasks.runtime`` builds it, behind
    ``gate``; ``primary`` (a ``TimedAdapter``, say) stands in for the primary's adapter."""
    from flexitasks.failover.policy import default_policy
    from flexitasks.failover.router import Router
    from flexitasks.providers import build_adapter

    return Router(
        providers=settings.providers,
        adapters={p.name: primary if primary is not None and p.name == PRIMARY else build_adapter(p)
                  for p in settings.providers},
        gate=gate,
        policy=default_policy(settings.retry),
        request_timeout=settings.retry.request_timeout,
    )


def chat_request(*providers: str) -> Any:
    from flexitasks.models import ChatRequest

    return ChatRequest.model_validate({
        "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 16,
        "providers": list(providers) or None,
    })
