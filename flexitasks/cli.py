"""The ``flexitasks`` command line: what an operator needs, none of it needing a worker.

``status``, ``metrics`` and ``dashboard`` read the fleet from Redis (``fleet.py``);
``trip``/``reset``/``disable`` change a breaker in Redis through the same Lua path as
every other transition (``RedisBreakerStore.force``), so every process learns of it by
pub/sub; ``chat`` sends one task and waits; ``check-config`` validates a file. Each
subcommand parses its own arguments; a bad one is a usage message and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from flexitasks.config import load_settings, no_config_warning
from flexitasks.errors import ConfigError
from flexitasks.fleet import STATE_COLOURS, reader_for, safe_url

if TYPE_CHECKING:
    from flexitasks.config import Settings

log = logging.getLogger("flexitasks.cli")

__all__ = ["STATE_COLOURS", "main"]
FORCE_TARGETS = {"trip": "forced_open", "reset": "closed", "disable": "disabled"}


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit 2."""


def _settings() -> Settings:
    """The settings of ``FLEXITASKS_CONFIG`` (else ./flexitasks.toml) and the environment,
    read when a command runs, with the loud warning when there is no file at all."""
    warning = no_config_warning()
    if warning:
        print(f"flexitasks: {warning}", file=sys.stderr)
    return load_settings()


def _about(settings: Settings) -> dict[str, Any]:
    return {"source": settings.source, "redis_url": safe_url(settings.sync.redis_url)}


def cli_status(settings: Settings) -> dict[str, Any]:
    """``{"providers": {...}, "processes": [...], "source", "redis_url"}`` from Redis."""
    return {**reader_for(settings).status(), **_about(settings)}


# -- status -------------------------------------------------------------------------------------
def _probe_text(snap: dict[str, Any]) -> str:
    if snap["state"] == "open":
        left = snap.get("probe_in") or 0.0
        return f"in {left:.1f}s" if left > 0 else "now"
    return {"half_open": "probing", "forced_open": "after reset"}.get(snap["state"], "")


def _print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def state(name: str) -> str:
        return f"[{STATE_COLOURS.get(name, 'white')}]{name}[/]"

    console.print(f"config: {status.get('source', '?')}   Redis: {status.get('redis_url', '?')}")
    table = Table(title="breakers (authoritative, in Redis)")
    for col in ("provider", "state", "next probe", "generation", "failures/calls", "reopens", "reason"):
        table.add_column(col)
    for name, snap in status["providers"].items():
        table.add_row(name, state(snap["state"]), _probe_text(snap), str(snap["generation"]),
                      f"{snap['failures']}/{snap['calls']}", str(snap["reopen_count"]), snap["reason"] or "")
    console.print(table)
    procs = Table(title=f"processes ({len(status['processes'])} live views)")
    for col in ("host", "pid", "role", *status["providers"].keys()):
        procs.add_column(col)
    for p in status["processes"]:
        cells = []
        for name in status["providers"]:
            b = p.get("breakers", {}).get(name, {})
            cells.append(f"{state(b.get('state', '?'))} g{b.get('generation', '?')}")
        procs.add_row(p.get("host", "?"), str(p.get("pid", "?")), p.get("role", "?"), *cells)
    console.print(procs)
    if status.get("limits"):
        limits = Table(title="limits (fleet-wide, in Redis)")
        for col in ("provider", "limit", "used", "capacity", "headroom", "skips"):
            limits.add_column(col)
        for name, entry in status["limits"].items():
            for limit, v in entry.items():
                if limit != "skips":
                    label = f"rpm {v['per_minute']:g}/min, burst" if limit == "rpm" else limit
                    limits.add_row(name, label, f"{v['used']:g}", f"{v['capacity']:g}", f"{v['headroom']:g}",
                                   str(entry["skips"].get(limit, 0)))
        console.print(limits)


def cmd_status(args: argparse.Namespace) -> int:
    status = cli_status(_settings())
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        _print_status(status)
    return 0


# -- trip / reset / disable -------------------------------------------------------------------
def cmd_force(args: argparse.Namespace) -> int:
    from flexitasks.breaker.store import BreakerState
    from flexitasks.transition_log import log_transition

    settings = _settings()
    names = [p.name for p in settings.providers]
    if args.provider not in names:
        raise UsageError(f"unknown provider {args.provider!r}; configured: {', '.join(names) or '(none)'}")
    reader = reader_for(settings)
    policy = settings.breaker_policy(settings.provider(args.provider))
    result = reader.store.force(args.provider, policy, BreakerState(FORCE_TARGETS[args.command]))
    snap = result.snapshot
    if result.transitioned:
        log_transition(result, actor="flexitasks " + args.command)
        print(f"{args.provider}: {result.previous.value if result.previous else '?'} -> {snap.state.value} "
              f"(generation {snap.generation}); every process learns it by pub/sub")
    else:
        print(f"{args.provider}: already {snap.state.value} (generation {snap.generation}), unchanged")
    return 0


# -- chat -------------------------------------------------------------------------------------
def cmd_chat(args: argparse.Namespace) -> int:
    _settings()
    from flexitasks import FlexitasksError, chat_task

    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.text}
    ]
    options: dict[str, Any] = {}
    if args.provider:
        options["providers"] = args.provider
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    pending = chat_task.delay(messages, **options)
    try:
        result = pending.get(timeout=args.timeout)
    except FlexitasksError as exc:
        print(f"flexitasks: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"flexitasks: no answer within {args.timeout:g}s (task {pending.id}); is a worker running?",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(result["content"])
    tried = " -> ".join(f"{a['provider']}:{a['outcome']}" for a in result["attempts"])
    print(f"-- {result['provider']} ({result['model']}), {result['latency_ms']:.0f} ms; attempts: {tried}",
          file=sys.stderr)
    return 0


# -- check-config ---------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    if args.file is None:
        warning = no_config_warning()
        if warning:
            print(f"flexitasks: {warning}", file=sys.stderr)
    settings = load_settings(args.file)
    print(f"{settings.source}: valid")
    print(f"  broker {safe_url(settings.celery.broker_url)}; breaker Redis {safe_url(settings.sync.redis_url)}")
    if not settings.providers:
        print("  no providers: every chat task would fail")
    for warning in settings.warnings():
        print(f"  warning: {warning}")
    for p in sorted(settings.providers, key=lambda p: p.priority):
        key = "no key" if p.api_key_env is None else (
            f"key from {p.api_key_env} ({'set' if p.api_key is not None else 'NOT SET: its calls will fail over'})")
        print(f"  {p.priority:>4}  {p.name} ({p.kind}, {p.model}), {key}")
    return 0


# -- metrics / dashboard ----------------------------------------------------------------------
def cmd_metrics(args: argparse.Namespace) -> int:
    from flexitasks.metrics import exporter as metrics

    settings = _settings()
    reader = reader_for(settings)
    if args.once:
        print(metrics.render(reader), end="")
        return 0
    metrics.serve(reader, port=args.port, addr=args.host)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from flexitasks.dashboard.server import serve

    settings = _settings()
    serve(reader_for(settings), settings.sync.channel, _about(settings), host=args.host, port=args.port)
    return 0


# -- the parser -------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flexitasks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text)

    st = add("status", "Breaker state (authoritative, in Redis), when an open one may probe next, and every "
                       "live process's applied view; needs no worker.")
    st.add_argument("--json", action="store_true", help="print JSON instead of tables")
    for command, text in (
        ("trip", "Force a provider's breaker open fleet-wide (skipped everywhere) until `flexitasks reset`."),
        ("reset", "Close a provider's breaker fleet-wide: failure window, probe and back-off cleared."),
        ("disable", "Never trip a provider's breaker (always tried, failures not counted) until reset."),
    ):
        fp = add(command, text + " Acts on Redis directly; no worker needs to be online.")
        fp.add_argument("provider", help="provider name from the config file")
    ch = add("chat", "Send one chat task, wait for it, print the answer (stdout) and who answered (stderr); "
                     "needs a worker.")
    ch.add_argument("text", help="the user message")
    ch.add_argument("--system", help="a system message before it")
    ch.add_argument("--provider", action="append", metavar="NAME", help="only this provider (repeatable)")
    ch.add_argument("--max-tokens", type=int)
    ch.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the answer (default 180)")
    ch.add_argument("--json", action="store_true", help="print the whole result as JSON")
    cc = add("check-config", "Validate a configuration file (default: FLEXITASKS_CONFIG, else ./flexitasks.toml) "
                             "and summarise it; exit 2 with the problems if it is invalid.")
    cc.add_argument("file", nargs="?", help="the TOML file to check")
    me = add("metrics", "Prometheus exporter of the fleet: breaker state and per-call counters, read from "
                        "Redis at scrape time (flexitasks_redis_up 0 while Redis is down).")
    me.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    me.add_argument("--port", type=int, default=9808, help="serve /metrics on this port (default 9808)")
    me.add_argument("--once", action="store_true", help="print the metrics once and exit")
    da = add("dashboard", "Live page of the fleet's breakers, pushed by server-sent events from the breaker "
                          "channel; needs Redis, not a worker.")
    da.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    da.add_argument("--port", type=int, default=9809, help="port (default 9809)")
    sub.add_parser("fake-provider", add_help=False, help="Run the fake OpenAI/Anthropic provider (--help for its "
                                                         "options).")
    sub.add_parser("demo", add_help=False, help="Run the failover and fleet-breaker demo.")
    return parser


COMMANDS = {"status": cmd_status, "trip": cmd_force, "reset": cmd_force, "disable": cmd_force,
            "chat": cmd_chat, "check-config": cmd_check_config, "metrics": cmd_metrics,
            "dashboard": cmd_dashboard}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "fake-provider":
        from flexitasks.fake_provider.server import main as fake_main

        return fake_main(rest)
    if args.command == "demo":
        from flexitasks.demo import main as demo_main

        return demo_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    started = time.monotonic()
    try:
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print(f"flexitasks {args.command}: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"flexitasks: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        import redis

        from flexitasks.breaker.redis_store import BreakerStoreError

        if isinstance(exc, redis.RedisError | BreakerStoreError):
            print(f"flexitasks: Redis unreachable: {exc}", file=sys.stderr)
            return 1
        raise
    finally:
        log.debug("%s took %.3fs", args.command, time.monotonic() - started)


if __name__ == "__main__":
    raise SystemExit(main())
