"""``make demo``: failover and fleet-wide breakers, live, on this machine.

Owns the demo only (only ``flexitasks demo`` imports it): it claims an empty Redis DB, writes
a temporary config, starts two fake providers and a real ``celery -A flexitasks worker
--concurrency 4`` as subprocesses, sends chat tasks through them, breaks the primary
provider, shows the breaker opening in every process of the pool, heals the provider and
shows a single probe closing it. Everything it started or wrote (subprocesses, Redis
keys, the temp dir) is removed on the way out, also on Ctrl-C or SIGTERM.

Settings are read when ``flexitasks.celery_app`` is imported, and ``python -m flexitasks.demo``
imports the package (hence the app) before this module runs: so ``main`` first writes the
config and re-executes itself with ``FLEXITASKS_CONFIG`` set; the second stage imports
the rest of flexitasks lazily, inside the methods that use it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

# The demo takes the first empty DB of these: the tests lease 8-15 (on DB 0), the benchmarks use 5.
DEMO_DBS = (3, 4, 6, 7)
MARKER = "flexitasks-demo:owner"  # {"pid", "workdir"} of the demo that owns the DB
STATE_ENV = "FLEXITASKS_DEMO_STATE"  # what stage 1 prepared, for stage 2 (see ``main``)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
KEY_ENVS = {"openai": "FLEXITASKS_DEMO_OPENAI_KEY", "anthropic": "FLEXITASKS_DEMO_ANTHROPIC_KEY"}
RECOVERY = 3.0  # seconds a breaker stays OPEN in the demo (the default is 10)
THRESHOLD = 5  # failures that open a breaker (the default)
PROMPTS = ["Summarise ticket #4711", "Translate 'good morning' to Italian", "Name three prime numbers",
           "Suggest a title for the release notes", "Classify: 'the app crashes on login'",
           "Write a haiku about queues", "Extract the date from 'due 3 March'", "Say hello"]


class DemoError(Exception):
    """The demo cannot go on; the message says why and where to look."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: unwind through every ``finally`` and clean up."""


_signalled: list[str] = []  # signals received; see ``checkpoint``


def checkpoint() -> None:
    """Raise ``Interrupted`` again if a signal came: the handler's own raise is lost when
    it lands inside a ``__del__`` (Celery's ``AsyncResult.__del__`` talks to Redis)."""
    if _signalled:
        raise Interrupted(_signalled[0])


# ---------------------------------------------------------------- small helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the demo itself is killed (-9), so a hard
    kill of the demo does not leave a worker pool behind (Linux only; elsewhere a no-op)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def exited_unreaped(pid: int) -> bool:
    """Has our child ``pid`` exited? Leaves it a zombie (WNOWAIT), so its pid, and the
    process group it leads, cannot be reused by an unrelated process before we reap it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_for(
    check: Callable[[], Any], timeout: float, interval: float = 0.05, *, interruptible: bool = True
) -> Any:
    """Poll ``check`` until it returns something truthy; None on timeout. Cleanup polls
    with ``interruptible=False``: a second Ctrl-C must not abandon it."""
    deadline = time.monotonic() + timeout
    while True:
        if interruptible:
            checkpoint()
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def config_text(db_url: str, prefix: str, ports: dict[str, int]) -> str:
    return f"""\
# Written by flexitasks.demo for one run; removed when the demo ends.
[celery]
broker_url = "{db_url}"
result_backend = "{db_url}"
max_task_retries = 1
retry_backoff = 1
retry_backoff_max = 2

[sync]
redis_url = "{db_url}"
channel = "{prefix}:events"
key_prefix = "{prefix}"
resync_interval = 5.0
heartbeat_interval = 1.0

[breaker]
failure_threshold = {THRESHOLD}
window = 60.0
recovery_timeout = {RECOVERY}
max_recovery_timeout = 12.0
jitter = 0.0

[retry]
# One task retries the primary until the breaker opens, so a single child takes every failure.
same_provider_retries = {THRESHOLD - 1}
same_provider_backoff = 0.05
request_timeout = 20.0

[[providers]]
name = "openai"
kind = "openai"
model = "gpt-4o-mini"
priority = 1
api_key_env = "{KEY_ENVS['openai']}"
base_url = "http://127.0.0.1:{ports['openai']}/v1"
timeout = 10.0
connect_timeout = 1.0
first_token_timeout = 3.0
stall_timeout = 2.0

[[providers]]
name = "anthropic"
kind = "anthropic"
model = "claude-sonnet-4-5"
priority = 2
api_key_env = "{KEY_ENVS['anthropic']}"
base_url = "http://127.0.0.1:{ports['anthropic']}"
timeout = 10.0
connect_timeout = 1.0
first_token_timeout = 3.0
stall_timeout = 2.0
"""


def compact_attempts(attempts: list[dict[str, Any]]) -> str:
    """'openai ✗500 x5 → anthropic ✓': consecutive identical attempts folded."""
    parts: list[tuple[str, int]] = []
    for a in attempts:
        if a["outcome"] == "ok":
            label = f"{a['provider']} [green]✓[/]"
        elif a["outcome"] == "skipped":
            label = f"{a['provider']} [yellow]skipped[/]"
        else:
            m = re.match(r"^(\w+)(?: (\d{3}))?:", a.get("error") or "")
            why = (m.group(2) or m.group(1)) if m else "error"
            label = f"{a['provider']} [red]✗{why}[/]"
        if parts and parts[-1][0] == label:
            parts[-1] = (label, parts[-1][1] + 1)
        else:
            parts.append((label, 1))
    return " → ".join(label + (f" x{n}" if n > 1 else "") for label, n in parts)


# ---------------------------------------------------------------- the demo


class Demo:
    """One run. ``state`` carries what stage 1 set up across the re-exec (see ``main``)."""

    def __init__(self, redis_url: str, state: dict[str, Any] | None = None) -> None:
        from rich.console import Console

        # Not a terminal (make demo | tee): keep lines whole rather than wrap at 80 columns.
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
        parts = urlsplit(redis_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
        state = state or {}
        self.run_id: str = state.get("run_id") or uuid.uuid4().hex[:6]
        self.prefix = f"flexitasks-demo-{self.run_id}"
        self.workdir = Path(state["workdir"]) if state else Path(tempfile.mkdtemp(prefix="flexitasks-demo-"))
        self.ports: dict[str, int] = state.get("ports", {})
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.db: int | None = None
        self.redis: Any = None
        if state:
            import redis

            self.db = int(state["db"])
            self.redis = redis.Redis(host=self.host, port=self.port, db=self.db, socket_timeout=5)
        self.pubsub: Any = None
        self.admins: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.pending: list[Any] = []  # AsyncResults in flight

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "workdir": str(self.workdir), "db": self.db, "ports": self.ports}

    # -- output --------------------------------------------------------------------------------
    def step(self, n: int, title: str, what: str) -> None:
        checkpoint()
        self.console.print(f"\n[bold cyan]{n}. {title}[/]")
        self.console.print(f"   [dim]{what}[/]")

    def say(self, text: str) -> None:
        checkpoint()
        self.console.print(f"   {text}")

    # -- setup ---------------------------------------------------------------------------------
    def claim_db(self) -> None:
        """Take the first DB of DEMO_DBS that is empty (or left over by a dead demo)."""
        import redis

        for db in DEMO_DBS:
            client = redis.Redis(host=self.host, port=self.port, db=db, socket_timeout=5)
            owner = json.loads(client.get(MARKER) or "null")
            if isinstance(owner, dict) and not pid_alive(int(owner["pid"])):
                # A demo that was killed before it could clean up (-9, or during its imports).
                client.flushdb()
                shutil.rmtree(owner["workdir"], ignore_errors=True)
            if client.set(MARKER, json.dumps({"pid": os.getpid(), "workdir": str(self.workdir)}), nx=True):
                if client.dbsize() == 1:
                    self.db, self.redis = db, client
                    return
                client.delete(MARKER)
            client.close()
        dbs = ", ".join(map(str, DEMO_DBS))
        raise DemoError(f"no empty Redis DB among {dbs} on {self.host}:{self.port}; "
                        "the demo only writes to a DB it can empty afterwards")

    def write_config(self) -> None:
        self.ports = ports = {"openai": free_port(), "anthropic": free_port()}
        db_url = f"redis://{self.host}:{self.port}/{self.db}"
        path = self.workdir / "flexitasks.toml"
        path.write_text(config_text(db_url, self.prefix, ports))
        os.environ["FLEXITASKS_CONFIG"] = str(path)
        for var in ("FLEXITASKS_BROKER_URL", "FLEXITASKS_RESULT_BACKEND", "FLEXITASKS_REDIS_URL"):
            os.environ.pop(var, None)  # the demo's own file decides where everything goes
        for env in KEY_ENVS.values():
            os.environ[env] = f"demo-key-{self.run_id}"  # the fakes check it: keys come from the env

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (the child owns it)
        try:
            proc = subprocess.Popen(
                args, cwd=PACKAGE_ROOT, env=os.environ.copy(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )
        finally:
            log.close()
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.workdir / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join("     " + line for line in text.splitlines()[-lines:])

    def start_fakes(self, ports: dict[str, int]) -> None:
        from flexitasks.fake_provider import FakeProviderAdmin

        for name, port in ports.items():
            self.spawn(f"fake-{name}", [sys.executable, "-m", "flexitasks.cli", "fake-provider",
                                        "--port", str(port), "--name", name, "--api-key-env", KEY_ENVS[name]])
            self.admins[name] = FakeProviderAdmin(f"http://127.0.0.1:{port}", timeout=5)
        for (name, proc), admin in zip(self.procs, self.admins.values(), strict=True):
            up = wait_for(lambda a=admin, p=proc: p.poll() is None and a.health(), 20)
            if not up or proc.poll() is not None:
                raise DemoError(f"{name} did not start:\n{self.log_tail(name)}")
        for name, port in ports.items():
            self.say(f"fake provider [bold]{name:<9}[/] on 127.0.0.1:{port} "
                     f"(speaks the {'OpenAI' if name == 'openai' else 'Anthropic'} API)")

    def start_worker(self) -> None:
        from flexitasks import app

        node = f"demo-{self.run_id}@%h"
        proc = self.spawn("worker", [sys.executable, "-m", "celery", "-A", "flexitasks", "worker",
                                     "--pool", "prefork", "--concurrency", "4", "-n", node,
                                     "--loglevel", "WARNING", "--without-gossip", "--without-mingle"])

        def pinged() -> bool:
            if proc.poll() is not None:
                raise DemoError(f"the worker exited with code {proc.returncode}:\n{self.log_tail('worker')}")
            replies = app.control.ping(timeout=0.5) or []
            return any(name.startswith(f"demo-{self.run_id}@") for reply in replies for name in reply)

        if not wait_for(pinged, 60, 0.1):
            raise DemoError(f"the worker did not answer ping within 60 s:\n{self.log_tail('worker')}")
        # Every child starts its own breaker sync after fork; wait until all five report.
        def all_views() -> list[dict[str, Any]] | None:
            views: list[dict[str, Any]] = self.fleet()["processes"]
            return views if len(views) >= 5 else None

        views = wait_for(all_views, 20, 0.1)
        if not views:
            raise DemoError(f"the pool did not report its breaker views:\n{self.log_tail('worker')}")
        roles = [p["role"] for p in views]
        main, children = roles.count("worker-main"), roles.count("worker-child")
        self.say(f"worker [bold]celery -A flexitasks worker --concurrency 4[/] (pid {proc.pid}) is up; "
                 f"{main} main + {children} children run breaker sync")

    def subscribe(self) -> None:
        """Listen to the breaker channel ourselves, to narrate each transition."""
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(f"{self.prefix}:events")

    # -- reading the fleet ---------------------------------------------------------------------
    def fleet(self) -> dict[str, Any]:
        from flexitasks.cli import fleet_status

        return fleet_status()

    def drain_events(self) -> list[dict[str, Any]]:
        """Transition events received since the last call (failure events skipped)."""
        new = []
        while True:
            message = self.pubsub.get_message(timeout=0.01)
            if message is None:
                break
            event = json.loads(message["data"])
            if event.get("type") == "transition":
                new.append(event)
        self.events += new
        return new

    def show_events(self, wait_for_state: str | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            got += self.drain_events()
            if wait_for_state is None or any(e["state"] == wait_for_state for e in got):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        for e in got:
            self.say(f"event: [bold]{e['provider']}[/] {e['previous']} → [bold]{e['state']}[/] "
                     f"(reason {e['reason']}, generation {e['generation']})")
        return got

    # -- sending work --------------------------------------------------------------------------
    def send(self, n: int, start: int = 0) -> list[dict[str, Any]]:
        """Send ``n`` chat tasks at once and wait for every answer."""
        from flexitasks import chat_task

        msgs = [[{"role": "system", "content": "Answer briefly."},
                 {"role": "user", "content": PROMPTS[(start + i) % len(PROMPTS)]}] for i in range(n)]
        self.pending = [chat_task.delay(m, max_tokens=64) for m in msgs]
        results = []
        for r in self.pending:
            results.append(r.get(timeout=60))
            checkpoint()
        self.pending = []
        return results

    def results_table(self, results: list[dict[str, Any]], start: int = 1) -> None:
        from rich.table import Table

        table = Table(box=None, padding=(0, 2), pad_edge=False, show_edge=False)
        table.add_column("#", justify="right")
        table.add_column("answered by")
        table.add_column("attempts")
        table.add_column("ms", justify="right")
        table.add_column("answer", max_width=34, no_wrap=True, overflow="ellipsis")
        for i, r in enumerate(results, start):
            colour = "green" if r["provider"] == "openai" else "magenta"
            table.add_row(str(i), f"[{colour}]{r['provider']}[/] ({r['model']})",
                          compact_attempts(r["attempts"]), f"{r['latency_ms']:.0f}", r["content"])
        self.console.print(table, crop=False)

    def requests_to(self, name: str) -> int:
        return int(self.admins[name].stats()["requests"])

    def last_seq(self, name: str) -> int:
        log = self.admins[name].requests()
        return int(log[-1]["seq"]) if log else 0

    def fleet_table(self, status: dict[str, Any], provider: str, since: float | None = None) -> None:
        from rich.table import Table

        from flexitasks.cli import STATE_COLOURS

        table = Table(box=None, padding=(0, 2), pad_edge=False, show_edge=False)
        for col in ("host", "pid", "role", f"{provider} state", "generation"):
            table.add_column(col)
        if since is not None:
            table.add_column("applied after OPEN", justify="right")
        for p in status["processes"]:
            b = p["breakers"].get(provider, {})
            state = b.get("state", "?")
            cells = [p["host"], str(p["pid"]), p["role"], f"[{STATE_COLOURS.get(state, 'white')}]{state}[/]",
                     str(b.get("generation", "?"))]
            if since is not None:
                cells.append(f"{(b.get('applied_at', since) - since) * 1000:+.1f} ms")
            table.add_row(*cells)
        self.console.print(table, crop=False)

    def wait_fleet(self, provider: str, state: str, generation: int, timeout: float = 5.0) -> dict[str, Any]:
        """Poll until every live process shows ``state`` at ``generation``; keeps the first
        applied_at seen per process (a later periodic resync re-stamps it)."""
        first: dict[int, float] = {}

        def check() -> dict[str, Any] | None:
            status = self.fleet()
            done = bool(status["processes"])
            for p in status["processes"]:
                b = p["breakers"].get(provider, {})
                if b.get("generation") == generation and b.get("state") == state:
                    first.setdefault(p["pid"], b["applied_at"])
                else:
                    done = False
            return status if done else None

        status = wait_for(check, timeout, 0.02)
        if status is None:
            raise DemoError(f"not every process showed {provider} {state} (generation {generation}) "
                            f"within {timeout} s")
        for p in status["processes"]:
            p["breakers"][provider]["applied_at"] = first.get(p["pid"], p["breakers"][provider]["applied_at"])
        return status

    # -- the story -------------------------------------------------------------------------------
    def run(self) -> None:
        c = self.console
        c.print("[bold]flexitasks demo[/]: priority failover and fleet-wide circuit breakers")

        self.step(1, "Start", "two fake providers and a real worker pool (1 main + 4 prefork children)")
        from flexitasks.celery_app import settings

        if settings.source != os.environ.get("FLEXITASKS_CONFIG"):
            raise DemoError(f"flexitasks loaded {settings.source}, not the demo's config")
        self.say(f"Redis {self.host}:{self.port} DB {self.db}, key prefix {self.prefix} "
                 f"(breaker: {THRESHOLD} failures open it, {RECOVERY:g} s until a probe)")
        self.subscribe()
        self.start_fakes(self.ports)
        self.start_worker()

        self.step(2, "Normal traffic", "4 chat tasks at once; openai has priority 1, anthropic priority 2")
        results = self.send(4)
        self.results_table(results)

        self.step(3, "Outage on the primary", "the fake 'openai' now answers every call with HTTP 500")
        self.admins["openai"].set_fault(status=500)
        seq_before = self.last_seq("openai")
        results = self.send(1, start=4)
        self.results_table(results, start=5)
        self.say(f"one task in one child retried openai until {THRESHOLD} failures opened its breaker, "
                 "then failed over to anthropic")
        opened = [e for e in self.show_events("open") if e["state"] == "open"]
        if not opened:
            raise DemoError("the breaker did not open")
        open_event = opened[0]

        self.step(4, "Every process sees it", "flexitasks status: each process's applied view, from Redis")
        status = self.wait_fleet("openai", "open", open_event["generation"])
        failures = [r for r in self.admins["openai"].requests(since=seq_before) if r["status"] == 500]
        first_failure = failures[0]["t"]
        self.fleet_table(status, "openai", since=open_event["at"])
        applied = [p["breakers"]["openai"]["applied_at"] for p in status["processes"]]
        auth = status["providers"]["openai"]
        self.say(f"authoritative: openai [red]{auth['state']}[/] generation {auth['generation']}, "
                 f"{auth['failures']}/{auth['calls']} failures/calls in the window, "
                 f"probe allowed in {max(auth['open_until'] - auth['now'], 0):.1f} s")
        self.say(f"first failure → breaker OPEN: {(open_event['at'] - first_failure) * 1000:.0f} ms "
                 f"({len(failures)} calls failed, with backoff between them)")
        self.say(f"OPEN → last of {len(applied)} processes applied it: "
                 f"[bold]{(max(applied) - open_event['at']) * 1000:.1f} ms[/]; "
                 f"first failure → last process: {(max(applied) - first_failure) * 1000:.0f} ms")

        self.step(5, "While OPEN", "4 tasks at once: each skips openai and goes straight to anthropic")
        before = self.requests_to("openai")
        results = self.send(4, start=5)
        self.results_table(results, start=6)
        self.say(f"requests openai received meanwhile: [bold]{self.requests_to('openai') - before}[/]")

        self.step(6, "Recovery", f"openai is healthy again; after {RECOVERY:g} s one probe may test it")
        self.admins["openai"].clear()
        auth = self.fleet()["providers"]["openai"]
        wait = max(auth["open_until"] - auth["now"], 0.0) + 0.2
        self.say(f"waiting {wait:.1f} s for the recovery interval to end ...")
        time.sleep(wait)
        checkpoint()
        seq_before = self.last_seq("openai")
        results = self.send(4, start=1)
        self.results_table(results, start=10)
        closed = [e for e in self.show_events("closed") if e["state"] == "closed"]
        if not closed:
            raise DemoError("the breaker did not close after the probe")
        probes = [r for r in self.admins["openai"].requests(since=seq_before) if r["t"] <= closed[0]["at"]]
        self.say(f"calls to openai before the breaker closed: [bold]{len(probes)}[/] (the single probe; "
                 "tasks that came meanwhile skipped openai)")

        self.step(7, "Back on the primary", "4 more tasks; every process shows the breaker closed")
        results = self.send(4, start=2)
        self.results_table(results, start=14)
        status = self.wait_fleet("openai", "closed", closed[0]["generation"])
        self.fleet_table(status, "openai")
        c.print(f"\n[bold green]Done.[/] Cleaning up: worker, fake providers, Redis DB {self.db}, temp dir")

    # -- teardown --------------------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        """Stop every subprocess (workers first: warm shutdown), then empty the claimed DB."""
        problems: list[str] = []
        for result in self.pending:  # else Celery unsubscribes them at interpreter exit, noisily
            with contextlib.suppress(Exception):
                result.forget()
        self.pending = []
        for admin in self.admins.values():
            with contextlib.suppress(Exception):
                admin.close()
        for name, proc in sorted(self.procs, key=lambda np: np[0] != "worker"):
            if proc.returncode is not None:
                continue  # reaped already (it died early); its pid may belong to someone else now
            # Not reaped: the pid (and its process group) is still ours, even as a zombie.
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)  # the worker: warm shutdown, it stops its children
            if not wait_for(lambda p=proc: exited_unreaped(p.pid), 15, 0.05, interruptible=False):
                problems.append(f"{name} ignored SIGTERM for 15 s; killed")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # anything left in its session (prefork children)
            proc.wait()
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                self.pubsub.close()
        if self.redis is not None:
            try:
                self.redis.flushdb()
            except Exception as exc:
                problems.append(f"could not empty Redis DB {self.db}: {exc}")
            with contextlib.suppress(Exception):
                self.redis.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


# ---------------------------------------------------------------- entry point


def redis_problem(host: str, port: int) -> str | None:
    import redis

    try:
        redis.Redis(host=host, port=port, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return (str(exc) or type(exc).__name__).rstrip(".")
    return None


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP raise ``Interrupted`` (cleanup runs); restored afterwards."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        _signalled.append(signal.Signals(signum).name)
        raise Interrupted(_signalled[0])

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def signals_deferred(console: Any) -> Iterator[None]:
    """During cleanup a second Ctrl-C must not abandon half-stopped processes."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        console.print("   [dim](cleaning up; one moment)[/]")

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def main(argv: list[str] | None = None) -> int:
    """Two stages in one process: prepare (claim a DB, write the config) and re-exec,
    then run the story. ``python -m flexitasks.demo`` imports the ``flexitasks`` package,
    and so loads the settings, before this code runs; only a fresh interpreter started
    with ``FLEXITASKS_CONFIG`` set reads the demo's config. ``execv`` keeps the pid (the
    DB marker stays valid) and the terminal, so Ctrl-C still reaches the demo."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="flexitasks demo", description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis to use (default %(default)s); the demo takes an empty DB of 3, 4, 6, 7")
    args = parser.parse_args(argv)
    parts = urlsplit(args.redis)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    problem = redis_problem(host, port)
    if problem is not None:
        print(f"flexitasks demo: Redis is not reachable on {host}:{port} ({problem}); start one with "
              "`redis-server --daemonize yes` or `docker compose up -d redis`, then run `make demo` again.",
              file=sys.stderr)
        return 1
    raw_state = os.environ.pop(STATE_ENV, None)
    code, problems = 0, []
    with signals_interrupt():
        demo = Demo(args.redis, json.loads(raw_state) if raw_state else None)
        try:
            if raw_state is None:
                demo.claim_db()
                demo.write_config()
                os.environ[STATE_ENV] = json.dumps(demo.state())
                sys.stdout.flush()
                sys.stderr.flush()
                os.execv(sys.executable, [sys.executable, "-m", "flexitasks.demo", *argv])
            demo.run()
        except Interrupted as exc:
            demo.console.print(f"\n[yellow]Interrupted ({exc}).[/] Cleaning up ...")
            code = 130
        except DemoError as exc:
            demo.console.print(f"\n[bold red]demo failed:[/] {exc}")
            code = 1
        except Exception as exc:
            demo.console.print(f"\n[bold red]demo failed:[/] {type(exc).__name__}: {exc}")
            code = 1
        finally:
            with signals_deferred(demo.console):
                problems = demo.cleanup()
    for problem in problems:
        demo.console.print(f"[yellow]cleanup:[/] {problem}")
    if code == 0 and not problems:
        demo.console.print("Clean: every process stopped, Redis DB emptied, temp dir removed.")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
