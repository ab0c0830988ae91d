"""The ``flexitasks`` command line: fleet status, metrics, the fake provider, the demo.

``flexitasks status [--json]`` and ``flexitasks metrics`` read the authoritative breaker
state and every live process's applied view straight from Redis (no worker needs to
answer). The settings come from ``FLEXITASKS_CONFIG`` (else ``./flexitasks.toml``) when a
command runs; a bad file is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flexitasks.config import load_settings
from flexitasks.errors import ConfigError
from flexitasks.fleet import STATE_COLOURS, fleet_status


def _print_status(status: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def state(name: str) -> str:
        return f"[{STATE_COLOURS.get(name, 'white')}]{name}[/]"

    table = Table(title="breakers (authoritative, in Redis)")
    for col in ("provider", "state", "generation", "failures/calls", "reopens", "reason"):
        table.add_column(col)
    for name, snap in status["providers"].items():
        table.add_row(name, state(snap["state"]), str(snap["generation"]),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flexitasks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", help="breaker state and every process's view")
    st.add_argument("--json", action="store_true", help="print JSON instead of tables")
    me = sub.add_parser("metrics", help="Prometheus metrics of the fleet's breakers")
    me.add_argument("--port", type=int, default=9808, help="serve /metrics on this port")
    me.add_argument("--once", action="store_true", help="print the metrics once and exit")
    sub.add_parser("fake-provider", help="run the fake OpenAI/Anthropic provider", add_help=False)
    sub.add_parser("demo", help="run the failover and fleet-breaker demo", add_help=False)
    args, rest = parser.parse_known_args(argv)
    try:
        if args.command == "fake-provider":
            from flexitasks.fake_provider.server import main as fake_main

            return fake_main(rest)
        if args.command == "demo":
            from flexitasks.demo import main as demo_main

            return demo_main(rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        settings = load_settings()
        if args.command == "metrics":
            from flexitasks import metrics

            if args.once:
                print(metrics.render(lambda: fleet_status(settings)), end="")
                return 0
            metrics.serve(args.port, lambda: fleet_status(settings))
            return 0
        status = fleet_status(settings)
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
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        _print_status(status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
