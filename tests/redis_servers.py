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


@dataclass
class SentinelGroup:
    master: Server
    replica: Server
    sentinels: list[Server]
    master_name: str

    @property
    def url(self) -> str:
        """kombu's form: one ``sentinel://`` per sentinel, ';'-separated."""
        return ";".join(f"sentinel://127.0.0.1:{s.port}/0" for s in self.sentinels)

    def master_port(self) -> int | None:
        """The master every sentinel reports (None while they disagree or cannot say)."""
        seen = set()
        for s in self.sentinels:
            try:
                _host, port = s.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
            except (redis.RedisError, TypeError, ValueError):
                return None
            seen.add(int(port))
        return seen.pop() if len(seen) == 1 else None


@contextlib.contextmanager
def sentinel_group(master_name: str = "flexitasks") -> Iterator[SentinelGroup]:
    """A master, one replica and three sentinels (quorum 2, down after 1 s)."""
    with servers("sentinel") as group:
        master = group.start(name="master")
        replica = group.start("--replicaof", "127.0.0.1", str(master.port), name="replica")
        wait_until(lambda: replica.client().info("replication").get("master_link_status") == "up",
                   30, what="the replica to sync")
        sentinels = []
        for i in range(3):
            port = free_port()
            conf = group.workdir / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {group.workdir}\nlogfile {group.workdir}/sentinel-{i}.log\n"
                f"sentinel monitor {master_name} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {master_name} 1000\n"
                f"sentinel failover-timeout {master_name} 10000\n"
                f"sentinel parallel-syncs {master_name} 1\n"
            )
            proc = subprocess.Popen([REDIS_SERVER or "redis-server", str(conf), "--sentinel"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
            server = Server(port, proc, group.workdir / f"sentinel-{i}.log")
            group.servers.append(server)
            wait_until(lambda p=port: _pings(p), 15, what=f"sentinel on {port}")
            sentinels.append(server)
        sg = SentinelGroup(master, replica, sentinels, master_name)
        wait_until(lambda: sg.master_port() == master.port and _sentinels_know_each_other(sg), 30,
                   what="the sentinels to agree on the master and find each other")
        yield sg


def _sentinels_know_each_other(sg: SentinelGroup) -> bool:
    for s in sg.sentinels:
        info = s.client().execute_command("SENTINEL", "MASTER", sg.master_name)
        fields = dict(zip(info[::2], info[1::2], strict=False)) if isinstance(info, list) else info
        others = fields.get(b"num-other-sentinels", fields.get("num-other-sentinels"))
        replicas = fields.get(b"num-slaves", fields.get("num-slaves"))
        if int(others or 0) < 2 or int(replicas or 0) < 1:
            return False
    return True
