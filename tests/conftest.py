"""Shared fixtures: a real Redis DB of our own, two fake providers, a real worker pool.

The config file is written before anything imports ``flexitasks`` (settings are read
at import), with free ports chosen for the fake providers and a Redis DB and key
prefix of this run's own so runs never collide.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_HOST = os.environ.get("FLEXITASKS_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("FLEXITASKS_TEST_REDIS_PORT", "6379"))
RUN_ID = uuid.uuid4().hex[:8]


def _release_db(db: int) -> None:
    with contextlib.suppress(redis.RedisError):
        lessor = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_connect_timeout=1)
        if lessor.get(f"flexitasks-test-db-lease:{db}") == RUN_ID.encode():
            lessor.delete(f"flexitasks-test-db-lease:{db}")


def lease_db() -> int:
    """A Redis DB of this run's own, leased on DB 0 so concurrent runs never share one
    (Celery's queue and result keys are not under our key prefix)."""
    if os.environ.get("FLEXITASKS_TEST_DB"):
        return int(os.environ["FLEXITASKS_TEST_DB"])
    try:
        lessor = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_connect_timeout=1)
        for db in range(8, 16):
            if lessor.set(f"flexitasks-test-db-lease:{db}", RUN_ID, nx=True, ex=1800):
                atexit.register(_release_db, db)  # also for runs that never use redis_client
                return db
    except redis.RedisError:
        pass  # no Redis: the fixtures report it (and fail under CI=true)
    return 15


TEST_DB = lease_db()
KEY_PREFIX = f"ft-test-{RUN_ID}"
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_DB}"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PRIMARY_PORT, SECONDARY_PORT = free_port(), free_port()
WORKDIR = Path(tempfile.mkdtemp(prefix="flexitasks-test-"))
CONFIG = WORKDIR / "flexitasks.toml"
CONFIG.write_text(f"""
[celery]
broker_url = "{REDIS_URL}"
result_backend = "{REDIS_URL}"
max_task_retries = 1
retry_backoff = 1
retry_backoff_max = 1

[sync]
redis_url = "{REDIS_URL}"
channel = "{KEY_PREFIX}:events"
key_prefix = "{KEY_PREFIX}"
resync_interval = 2.0
heartbeat_interval = 1.0

[breaker]
failure_threshold = 5
window = 60.0
recovery_timeout = 2.0
max_recovery_timeout = 8.0

[retry]
same_provider_backoff = 0.05
rate_limit_backoff = 0.1
retry_after_wait_max = 2.0
request_timeout = 20.0

[[providers]]
name = "primary"
kind = "openai"
model = "gpt-4o-mini"
priority = 1
api_key_env = "FLEXITASKS_TEST_PRIMARY_KEY"
base_url = "http://127.0.0.1:{PRIMARY_PORT}/v1"
timeout = 10.0
connect_timeout = 1.0
first_token_timeout = 1.5
stall_timeout = 1.0

[[providers]]
name = "secondary"
kind = "anthropic"
model = "claude-sonnet-4-5"
priority = 2
api_key_env = "FLEXITASKS_TEST_SECONDARY_KEY"
base_url = "http://127.0.0.1:{SECONDARY_PORT}"
timeout = 10.0
connect_timeout = 1.0
first_token_timeout = 1.5
stall_timeout = 1.0
""")
os.environ["FLEXITASKS_CONFIG"] = str(CONFIG)
os.environ["FLEXITASKS_TEST_PRIMARY_KEY"] = "sk-test-primary-" + RUN_ID
os.environ["FLEXITASKS_TEST_SECONDARY_KEY"] = "sk-ant-test-secondary-" + RUN_ID
for var in ("FLEXITASKS_BROKER_URL", "FLEXITASKS_RESULT_BACKEND", "FLEXITASKS_REDIS_URL"):
    os.environ.pop(var, None)


def redis_available() -> bool:
    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def require_redis() -> None:
    if redis_available():
        return
    message = f"Redis is not answering on {REDIS_HOST}:{REDIS_PORT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: a missing Redis fails the run)")
    pytest.skip(message)


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}*", count=500))
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    require_redis()
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=TEST_DB)
    client.flushdb()
    yield client
    client.flushdb()
    lessor = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0)
    if lessor.get(f"flexitasks-test-db-lease:{TEST_DB}") == RUN_ID.encode():
        lessor.delete(f"flexitasks-test-db-lease:{TEST_DB}")


@pytest.fixture(scope="session")
def fakes() -> Iterator[dict[str, object]]:
    from flexitasks.fake_provider import FakeProvider

    with FakeProvider(name="primary", port=PRIMARY_PORT) as p, FakeProvider(name="secondary", port=SECONDARY_PORT) as s:
        yield {"primary": p, "secondary": s}


def start_worker(*extra: str, name: str = "w1", concurrency: int = 4) -> subprocess.Popen[bytes]:
    log = open(WORKDIR / f"worker-{name}.log", "ab")  # noqa: SIM115  (owned by the process)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "flexitasks", "worker", "--pool", "prefork",
         "--concurrency", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
         "--without-mingle", *extra],
        cwd=ROOT, env=os.environ.copy(), stdout=log, stderr=subprocess.STDOUT,
    )


def wait_for_worker(app: object, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=0.5) or []  # type: ignore[attr-defined]
        if any(name in r for reply in replies for r in reply):
            return
    raise AssertionError(f"worker {name} did not answer ping within {timeout}s; see {WORKDIR}")


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def worker(redis_client: redis.Redis, fakes: dict[str, object]) -> Iterator[subprocess.Popen[bytes]]:
    from flexitasks import app

    proc = start_worker(name="w1")
    try:
        wait_for_worker(app, "w1@")
        yield proc
    finally:
        stop_worker(proc)


@pytest.fixture()
def clean(fakes: dict[str, object], redis_client: redis.Redis) -> Iterator[dict[str, object]]:
    """Healthy fakes with zeroed counters, every breaker closed."""
    from flexitasks.breaker.redis_store import RedisBreakerStore
    from flexitasks.breaker.store import BreakerState
    from flexitasks.celery_app import settings

    store = RedisBreakerStore(redis_client, key_prefix=KEY_PREFIX, channel=f"{KEY_PREFIX}:events")
    for fp in fakes.values():
        fp.admin.reset()  # type: ignore[attr-defined]
    for p in settings.providers:
        store.force(p.name, settings.breaker_policy(p), BreakerState.CLOSED)
    time.sleep(0.1)
    yield fakes
