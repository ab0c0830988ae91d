"""``make demo``: failover and fleet-wide breakers, live, on this machine.

Owns the demo only (``python -m flexitasks.demo``, ``flexitasks demo``): it claims an empty Redis
DB, writes a temporary config, starts two fake providers and a real ``celery -A flexitasks worker
--concurrency 4``, sends chat tasks through them, breaks the primary provider, shows the breaker
opening in every process of the pool, heals the provider and shows a single probe closing it.
Everything it started or wrote (subprocesses, Redis keys, the temp dir) is removed on the way
out, also on Ctrl-C or SIGTERM. The demo builds its ``Settings`` in code, hands them to the app
(``app.use_settings``) and writes the same settings as the worker's config file.
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
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from rich.console import Console
from rich.table import Table

from flexitasks.config import Settings
from flexitasks.fake_provider.admin import FakeProviderAdmin
from flexitasks.fleet import STATE_COLOURS, fleet_status
from flexitasks.harness import free_port, wait_until

# The demo takes the first empty DB of these: the tests lease 8-15 (on DB 0), the benchmarks use 5.
DEMO_DBS = (3, 4, 6, 7)
MARKER = "flexitasks-demo:owner"  # {"pid", "workdir"} of the demo that owns the DB
PACKAGE_ROOT = Path(__file__).resolve().parent.parent
KEY_ENVS = {"openai": "FLEXITASKS_DEMO_OPENAI_KEY", "anthropic": "FLEXITASKS_DEMO_ANTHROPIC_KEY"}
RECOVERY = 3.0  # seconds a breaker stays OPEN in the demo (the default is 10)
THRESHOLD = 5  # failures that open a breaker (the default)
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PROMPTS = ["Summarise ticket #4711", "Translate 'good morning' to Italian", "Name three prime numbers",
           "Suggest a title for the release notes", "Classify: 'the app crashes on login'",
           "Write a haiku about queues", "Extract the date from 'due 3 March'", "Say hello"]


class DemoError(Exception):
    """The demo cannot go on; the message says why and where to look."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP: unwind through every ``finally`` and clean up."""


_signalled: list[str] = []  # signals received; see ``checkpoint``


def checkpoint() -> None:
    """Raise ``Interrupted`` if a signal came: the handler's own raise is lost when it lands
    inside a ``__del__`` (Celery's ``AsyncResult.__del__`` talks to Redis)."""
    if _signalled:
        raise Interrupted(_signalled[0])


def interrupt(signum: int, _frame: Any) -> None:
    _signalled.append(signal.Signals(signum).name)
    checkpoint()


@contextlib.contextmanager
def signals_handled(handler: Callable[[int, Any], Any]) -> Iterator[None]:
    """Route SIGINT/SIGTERM/SIGHUP to ``handler`` for the block; restore the old handlers."""
    saved = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return isinstance(exc, PermissionError)  # alive, but another user's
    return True


def die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the demo is killed (-9), so a hard kill does
    not leave a worker pool behind (Linux only; elsewhere a no-op)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def exited_unreaped(pid: int) -> bool:
    """Has our child ``pid`` exited? Leaves it a zombie (WNOWAIT), so its pid, and the
    process group it leads, cannot be reused by an unrelated process before we reap it."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_for(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; None on timeout. Interruptible."""
    return wait_until(check, timeout, interval=interval, on_poll=checkpoint)


def demo_settings(db_url: str, prefix: str, ports: dict[str, int]) -> Settings:
    """The demo's settings: its own DB and key prefix, short timeouts, a breaker that reopens fast."""
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    limits = {"timeout": 10.0, "connect_timeout": 1.0, "first_token_timeout": 3.0, "stall_timeout": 2.0}
    return Settings.model_validate({
        "source": "<flexitasks demo>",
        "celery": {"broker_url": db_url, "result_backend": db_url, "max_task_retries": 1,
                   "retry_backoff": 1, "retry_backoff_max": 2},
        "sync": {"redis_url": db_url, "channel": f"{prefix}:events", "key_prefix": prefix,
                 "resync_interval": 5.0, "heartbeat_interval": 1.0},
        "breaker": {"failure_threshold": THRESHOLD, "window": 60.0, "recovery_timeout": RECOVERY,
                    "max_recovery_timeout": 12.0, "jitter": 0.0},
        # One task retries the primary until the breaker opens, so a single child takes every failure.
        "retry": {"same_provider_retries": THRESHOLD - 1, "same_provider_backoff": 0.05, "request_timeout": 20.0},
        "providers": [
            {"name": "openai", "kind": "openai", "model": "gpt-4o-mini", "priority": 1,
             "api_key_env": KEY_ENVS["openai"], "base_url": url["openai"] + "/v1", **limits},
            {"name": "anthropic", "kind": "anthropic", "model": "claude-sonnet-4-5", "priority": 2,
             "api_key_env": KEY_ENVS["anthropic"], "base_url": url["anthropic"], **limits},
        ],
    })


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
            label = f"{a['provider']} [red]✗{(m.group(2) or m.group(1)) if m else 'error'}[/]"
        if parts and parts[-1][0] == label:
            parts[-1] = (label, parts[-1][1] + 1)
        else:
            parts.append((label, 1))
    return " → ".join(label + (f" x{n}" if n > 1 else "") for label, n in parts)


def table(*columns: str) -> Table:
    """A borderless table; a trailing '>' in a column name right-aligns it."""
    t = Table(box=None, padding=(0, 2), pad_edge=False, show_edge=False)
    for col in columns:
        t.add_column(col.rstrip(">"), justify="right" if col.endswith(">") else "left")
    return t


class Demo:
    """One run: what it claimed and started, so ``cleanup`` can undo exactly that."""

    def __init__(self, host: str, port: int) -> None:
        # Not a terminal (make demo | tee): keep lines whole rather than wrap at 80 columns.
        self.console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
        self.host, self.port = host, port
        self.run_id = uuid.uuid4().hex[:6]
        self.prefix = f"flexitasks-demo-{self.run_id}"
        self.workdir = Path(tempfile.mkdtemp(prefix="flexitasks-demo-"))
        self.ports = {"openai": free_port(), "anthropic": free_port()}
        self.db: int | None = None
        self.redis: redis.Redis | None = None
        self.pubsub: Any = None
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.admins: dict[str, FakeProviderAdmin] = {}
        self.pending: list[Any] = []  # AsyncResults in flight
        self.app: Any = None
        self.settings: Settings | None = None
        self.chat_task: Any = None

    def fleet(self) -> dict[str, Any]:
        assert self.settings is not None, "write_config comes first"
        return fleet_status(self.settings)

    def step(self, n: int, title: str, what: str) -> None:
        checkpoint()
        self.console.print(f"\n[bold cyan]{n}. {title}[/]\n   [dim]{what}[/]")

    def say(self, text: str) -> None:
        checkpoint()
        self.console.print(f"   {text}")

    # -- setup, in the order ``main`` calls it -------------------------------------------------
    def claim_db(self) -> None:
        """Take the first DB of DEMO_DBS that is empty (or left over by a demo killed with -9)."""
        for db in DEMO_DBS:
            client = redis.Redis(host=self.host, port=self.port, db=db, socket_timeout=5)
            owner = json.loads(client.get(MARKER) or "null")
            if isinstance(owner, dict) and not pid_alive(int(owner["pid"])):
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
        """The settings, and the same as the worker's config file and the env it names."""
        self.settings = demo_settings(f"redis://{self.host}:{self.port}/{self.db}", self.prefix, self.ports)
        path = self.workdir / "flexitasks.toml"
        path.write_text("# Written by flexitasks.demo for one run; removed when the demo ends.\n"
                        + self.settings.to_toml())
        os.environ["FLEXITASKS_CONFIG"] = str(path)
        for var in ("FLEXITASKS_BROKER_URL", "FLEXITASKS_RESULT_BACKEND", "FLEXITASKS_REDIS_URL"):
            os.environ.pop(var, None)  # the demo's own file decides where everything goes
        for env in KEY_ENVS.values():
            os.environ[env] = f"demo-key-{self.run_id}"  # the fakes check it: keys come from the env

    def load_app(self) -> None:
        """The producer side: the package's app, with the demo's settings."""
        from flexitasks import app, chat_task

        try:
            app.use_settings(self.settings)
        except RuntimeError as exc:
            raise DemoError(f"{exc}; run the demo in a process of its own") from None
        self.app, self.chat_task = app, chat_task

    # -- subprocesses ----------------------------------------------------------------------------
    def spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start ``args`` in a session of its own, so cleanup can kill its whole group; log to a file."""
        with open(self.workdir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                args, cwd=PACKAGE_ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=die_with_parent,
            )
        self.procs.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        text = (self.workdir / f"{name}.log").read_text(errors="replace")  # spawn created it
        return "\n".join("     " + line for line in text.splitlines()[-lines:])

    def start_fakes(self) -> None:
        for name, port in self.ports.items():
            self.spawn(f"fake-{name}", [sys.executable, "-m", "flexitasks.cli", "fake-provider",
                                        "--port", str(port), "--name", name, "--api-key-env", KEY_ENVS[name]])
            self.admins[name] = FakeProviderAdmin(f"http://127.0.0.1:{port}", timeout=5)
        for (name, proc), admin in zip(self.procs, self.admins.values(), strict=True):
            up = wait_for(lambda a=admin, p=proc: p.poll() is None and a.health(), 20)
            if not up or proc.poll() is not None:
                raise DemoError(f"{name} did not start:\n{self.log_tail(name)}")
        for name, port in self.ports.items():
            self.say(f"fake provider [bold]{name:<9}[/] on 127.0.0.1:{port} "
                     f"(speaks the {'OpenAI' if name == 'openai' else 'Anthropic'} API)")

    def start_worker(self) -> None:
        """Start the pool and wait until it answers ping and all five processes report a view."""
        proc = self.spawn("worker", [sys.executable, "-m", "celery", "-A", "flexitasks", "worker", "--pool",
                                     "prefork", "--concurrency", "4", "-n", f"demo-{self.run_id}@%h",
                                     "--loglevel", "WARNING", "--without-gossip", "--without-mingle"])

        def pinged() -> bool:
            if proc.poll() is not None:
                raise DemoError(f"the worker exited with code {proc.returncode}:\n{self.log_tail('worker')}")
            replies = self.app.control.ping(timeout=0.5) or []
            return any(name.startswith(f"demo-{self.run_id}@") for reply in replies for name in reply)

        if not wait_for(pinged, 60, 0.1):
            raise DemoError(f"the worker did not answer ping within 60 s:\n{self.log_tail('worker')}")
        def five_views() -> list[dict[str, Any]] | None:  # each child starts its breaker sync after fork
            views: list[dict[str, Any]] = self.fleet()["processes"]
            return views if len(views) >= 5 else None

        if not (views := wait_for(five_views, 20, 0.1)):
            raise DemoError(f"the pool did not report its breaker views:\n{self.log_tail('worker')}")
        roles = [p["role"] for p in views]
        self.say(f"worker [bold]celery -A flexitasks worker --concurrency 4[/] (pid {proc.pid}) is up; "
                 f"{roles.count('worker-main')} main + {roles.count('worker-child')} children "
                 "run breaker sync")

    # -- work and observation --------------------------------------------------------------------
    def send(self, n: int, start: int, row: int) -> None:
        """Send ``n`` chat tasks at once (prompts from ``start``), wait for all, table them from ``row``."""
        checkpoint()
        msgs = [[{"role": "system", "content": "Answer briefly."},
                 {"role": "user", "content": PROMPTS[(start + i) % len(PROMPTS)]}] for i in range(n)]
        self.pending = [self.chat_task.delay(m, max_tokens=64) for m in msgs]
        results = []
        for r in self.pending:
            results.append(r.get(timeout=60))
            checkpoint()
        self.pending = []
        t = table("#>", "answered by", "attempts", "ms>")
        t.add_column("answer", max_width=34, no_wrap=True, overflow="ellipsis")
        for i, r in enumerate(results, row):
            colour = "green" if r["provider"] == "openai" else "magenta"
            t.add_row(str(i), f"[{colour}]{r['provider']}[/] ({r['model']})",
                      compact_attempts(r["attempts"]), f"{r['latency_ms']:.0f}", r["content"])
        self.console.print(t, crop=False)

    def transition(self, state: str, failure: str, timeout: float = 5.0) -> dict[str, Any]:
        """Narrate the transitions published since the last call, until one to ``state``; return it."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while (message := self.pubsub.get_message(timeout=0.02)) or (
                time.monotonic() < deadline and not any(e["state"] == state for e in got)):
            event = json.loads(message["data"]) if message else {}
            if event.get("type") == "transition":  # failure events are not narrated
                got.append(event)
        for e in got:
            self.say(f"event: [bold]{e['provider']}[/] {e['previous']} → [bold]{e['state']}[/] "
                     f"(reason {e['reason']}, generation {e['generation']})")
        if not (match := [e for e in got if e["state"] == state]):
            raise DemoError(failure)
        return match[0]

    def wait_fleet(self, state: str, generation: int, timeout: float = 5.0) -> dict[str, Any]:
        """Poll until every live process shows openai ``state`` at ``generation``; keeps the first
        applied_at seen per process (a later periodic resync re-stamps it)."""
        first: dict[int, float] = {}

        def check() -> dict[str, Any] | None:
            status = self.fleet()
            for p in status["processes"]:
                b = p["breakers"].get("openai", {})
                if b.get("generation") == generation and b.get("state") == state:
                    first.setdefault(p["pid"], b["applied_at"])
            done = status["processes"] and all(p["pid"] in first for p in status["processes"])
            return status if done else None

        status = wait_for(check, timeout, 0.02)
        if status is None:
            raise DemoError(f"not every process showed openai {state} (generation {generation}) "
                            f"within {timeout} s")
        for p in status["processes"]:
            p["breakers"]["openai"]["applied_at"] = first[p["pid"]]
        return status

    def fleet_table(self, status: dict[str, Any], since: float | None = None) -> None:
        extra = ["applied after OPEN>"] if since is not None else []
        t = table("host", "pid", "role", "openai state", "generation", *extra)
        for p in status["processes"]:
            b = p["breakers"]["openai"]
            colour = STATE_COLOURS.get(b["state"], "white")
            cells = [p["host"], str(p["pid"]), p["role"], f"[{colour}]{b['state']}[/]", str(b["generation"])]
            if since is not None:
                cells.append(f"{(b['applied_at'] - since) * 1000:+.1f} ms")
            t.add_row(*cells)
        self.console.print(t, crop=False)

    def openai_calls(self) -> int:
        """Calls the fake openai has had so far; also the ``seq`` of its latest request log entry."""
        return int(self.admins["openai"].stats()["requests"])

    # -- the story ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Steps 1-7, in order; any that cannot show what it promises raises ``DemoError``."""
        self.console.print("[bold]flexitasks demo[/]: priority failover and fleet-wide circuit breakers")
        self.step(1, "Start", "two fake providers and a real worker pool (1 main + 4 prefork children)")
        self.say(f"Redis {self.host}:{self.port} DB {self.db}, key prefix {self.prefix} "
                 f"(breaker: {THRESHOLD} failures open it, {RECOVERY:g} s until a probe)")
        assert self.redis is not None
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)  # to narrate each transition
        self.pubsub.subscribe(f"{self.prefix}:events")
        self.start_fakes()
        self.start_worker()

        self.step(2, "Normal traffic", "4 chat tasks at once; openai has priority 1, anthropic priority 2")
        self.send(4, start=0, row=1)
        open_event, seq_before = self.outage()
        self.fleet_sees_it(open_event, seq_before)

        self.step(5, "While OPEN", "4 tasks at once: each skips openai and goes straight to anthropic")
        before = self.openai_calls()
        self.send(4, start=5, row=6)
        self.say(f"requests openai received meanwhile: [bold]{self.openai_calls() - before}[/]")
        closed = self.recovery()

        self.step(7, "Back on the primary", "4 more tasks; every process shows the breaker closed")
        self.send(4, start=2, row=14)
        self.fleet_table(self.wait_fleet("closed", closed["generation"]))
        self.console.print(f"\n[bold green]Done.[/] Cleaning up: worker, fake providers, Redis DB {self.db}, "
                           "temp dir")

    def outage(self) -> tuple[dict[str, Any], int]:
        """Step 3: the primary fails until its breaker opens; returns that event and the log position."""
        self.step(3, "Outage on the primary", "the fake 'openai' now answers every call with HTTP 500")
        self.admins["openai"].set_fault(status=500)
        seq_before = self.openai_calls()
        self.send(1, start=4, row=5)
        self.say(f"one task in one child retried openai until {THRESHOLD} failures opened its breaker, "
                 "then failed over to anthropic")
        return self.transition("open", "the breaker did not open"), seq_before

    def fleet_sees_it(self, open_event: dict[str, Any], seq_before: int) -> None:
        """Step 4: every process's applied view, and how long the OPEN took to reach the last one."""
        self.step(4, "Every process sees it", "flexitasks status: each process's applied view, from Redis")
        status = self.wait_fleet("open", open_event["generation"])
        failures = [r for r in self.admins["openai"].requests(since=seq_before) if r["status"] == 500]
        first_failure, opened_at = failures[0]["t"], open_event["at"]
        self.fleet_table(status, since=opened_at)
        last_applied = max(p["breakers"]["openai"]["applied_at"] for p in status["processes"])
        auth = status["providers"]["openai"]
        self.say(f"authoritative: openai [red]{auth['state']}[/] generation {auth['generation']}, "
                 f"{auth['failures']}/{auth['calls']} failures/calls in the window, "
                 f"probe allowed in {max(auth['open_until'] - auth['now'], 0):.1f} s")
        self.say(f"first failure → breaker OPEN: {(opened_at - first_failure) * 1000:.0f} ms "
                 f"({len(failures)} calls failed, with backoff between them)")
        self.say(f"OPEN → last of {len(status['processes'])} processes applied it: "
                 f"[bold]{(last_applied - opened_at) * 1000:.1f} ms[/]; "
                 f"first failure → last process: {(last_applied - first_failure) * 1000:.0f} ms")

    def recovery(self) -> dict[str, Any]:
        """Step 6: heal the primary, wait out the recovery interval, show one probe closing it."""
        self.step(6, "Recovery", f"openai is healthy again; after {RECOVERY:g} s one probe may test it")
        self.admins["openai"].clear()
        auth = self.fleet()["providers"]["openai"]
        wait = max(auth["open_until"] - auth["now"], 0.0) + 0.2
        self.say(f"waiting {wait:.1f} s for the recovery interval to end ...")
        time.sleep(wait)
        seq_before = self.openai_calls()
        self.send(4, start=1, row=10)
        closed = self.transition("closed", "the breaker did not close after the probe")
        probes = [r for r in self.admins["openai"].requests(since=seq_before) if r["t"] <= closed["at"]]
        self.say(f"calls to openai before the breaker closed: [bold]{len(probes)}[/] (the single probe; "
                 "tasks that came meanwhile skipped openai)")
        return closed

    # -- teardown ----------------------------------------------------------------------------------
    def stop(self, name: str, proc: subprocess.Popen[bytes]) -> str | None:
        """SIGTERM (the worker: warm shutdown, it stops its children), then SIGKILL whatever is
        left in its session. Uninterruptible: a second Ctrl-C must not abandon it."""
        if proc.returncode is not None:
            return None  # reaped already (it died early); its pid may belong to someone else now
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while not (exited := exited_unreaped(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # not reaped yet, so the group id is still ours
        proc.wait()
        return None if exited else f"{name} ignored SIGTERM for 15 s; killed"

    def cleanup(self) -> list[str]:
        """Stop every subprocess (the worker first), then empty the claimed DB, remove the temp dir."""
        for result in self.pending:  # else Celery unsubscribes them at interpreter exit, noisily
            with contextlib.suppress(Exception):
                result.forget()
        self.pending = []
        for admin in self.admins.values():
            admin.close()
        problems = [p for name, proc in sorted(self.procs, key=lambda np: np[0] != "worker")
                    if (p := self.stop(name, proc))]
        if self.pubsub is not None:
            with contextlib.suppress(Exception):
                self.pubsub.close()
        if self.redis is not None:
            try:
                self.redis.flushdb()
            except Exception as exc:
                problems.append(f"could not empty Redis DB {self.db}: {exc}")
            self.redis.close()
        shutil.rmtree(self.workdir, ignore_errors=True)
        return problems


def redis_problem(host: str, port: int) -> str | None:
    try:
        redis.Redis(host=host, port=port, socket_connect_timeout=2, socket_timeout=2).ping()
    except redis.RedisError as exc:
        return (str(exc) or type(exc).__name__).rstrip(".")
    return None


def main(argv: list[str] | None = None) -> int:
    """0 after a clean run; 1 if Redis is unreachable or a step fails; 130 after a signal."""
    parser = argparse.ArgumentParser(prog="flexitasks demo", description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis to use (default %(default)s); the demo takes an empty DB of 3, 4, 6, 7")
    parts = urlsplit(parser.parse_args(argv).redis)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    problem = redis_problem(host, port)
    if problem is not None:
        print(f"flexitasks demo: Redis is not reachable on {host}:{port} ({problem}); start one with "
              "`redis-server --daemonize yes` or `docker compose up -d redis`, then run `make demo` again.",
              file=sys.stderr)
        return 1
    code, problems = 0, []
    with signals_handled(interrupt):
        demo = Demo(host, port)
        try:
            demo.claim_db()
            demo.write_config()
            demo.load_app()
            demo.run()
        except Interrupted as exc:
            demo.console.print(f"\n[yellow]Interrupted ({exc}).[/] Cleaning up ...")
            code = 130
        except Exception as exc:
            why = str(exc) if isinstance(exc, DemoError) else f"{type(exc).__name__}: {exc}"
            demo.console.print(f"\n[bold red]demo failed:[/] {why}")
            code = 1
        finally:
            with signals_handled(lambda *_: demo.console.print("   [dim](cleaning up; one moment)[/]")):
                problems = demo.cleanup()
    for problem in problems:
        demo.console.print(f"[yellow]cleanup:[/] {problem}")
    if code == 0 and not problems:
        demo.console.print("Clean: every process stopped, Redis DB emptied, temp dir removed.")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
