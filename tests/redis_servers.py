"""redis-server processes a test starts on free local ports and always stops: a Cluster of
three masters, or a master + replica watched by three sentinels.

Test support only (no product code): the cluster and sentinel tests take them as
context managers, so a failing test still leaves no server behind.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis

from flexitasks.harness import free_port, wait_until

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")


@dataclass
class Server:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self, **kwargs: object) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2, **kwargs)  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@dataclass
class Servers:
    workdir: Path
    servers: list[Server] = field(default_factory=list)

    def start(self, *args: str, port: int | None = None, name: str = "redis") -> Server:
        port = port or free_port()
        log = self.workdir / f"{name}-{port}.log"
        proc = subprocess.Popen(
            [REDIS_SERVER or "redis-server", *args, "--port", str(port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir), "--logfile", str(log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        server = Server(port, proc, log)
        self.servers.append(server)
        wait_until(lambda: _pings(port), 15, interval=0.05, what=f"redis-server on {port} (log {log})")
        return server

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.kill()


def _pings(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def servers(prefix: str) -> Iterator[Servers]:
    workdir = Path(tempfile.mkdtemp(prefix=f"flexitasks-{prefix}-"))
    group = Servers(workdir)
    try:
        yield group
    finally:
        group.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def cluster(masters: int = 3) -> Iterator[list[Server]]:
    """A Redis Cluster of ``masters`` masters, no replicas, every slot assigned."""
    with servers("cluster") as group:
        nodes = [
            group.start("--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{i}.conf",
                        "--cluster-port", str(free_port()), "--cluster-node-timeout", "2000", name=f"node{i}")
            for i in range(masters)
        ]
        subprocess.run(
            [REDIS_CLI or "redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        wait_until(lambda: all(_cluster_ok(n) for n in nodes), 30, what="the cluster to report ok on every node")
        yield nodes


def _cluster_ok(node: Server) -> bool:
    info = node.client().execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text and "cluster_slots_assigned:16384" in text
