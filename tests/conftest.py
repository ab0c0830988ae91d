"""Shared fixtures: a real Redis DB of our own, two fake providers, a real worker pool.

The tests' ``SETTINGS`` are built in code, with free ports for the fake providers and a
Redis DB and key prefix of this run's own so runs never collide; the worker subprocesses
read the same settings from a file written from them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis

from flexitasks import app
from flexitasks.config import Settings
from flexitasks.harness import free_port, stop_process, wait_until

if TYPE_CHECKING:
    import anthropic
    import openai

    from flexitasks.fake_provider import FakeProvider

REDIS_HOST = os.environ.get("FLEXITASKS_TEST_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("FLEXITASKS_TEST_REDIS_PORT", "6379"))
RUN_ID = uuid.uuid4().hex[:8]


LEASE_KEY = "flexitasks-test-db-lease:{}"
LEASE_VALUE = f"{RUN_ID} {socket.gethostname()} {os.getpid()}"
_TAKE_OVER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'EX', 1800) end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end"


def _holder_gone(value: bytes | None) -> bool:
    """Was the lease taken by a test run on this host that has exited (killed, or a run that
    never reached its teardown)?"""
    parts = (value or b"").decode(errors="replace").split()
    if len(parts) != 3 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def lease_db() -> int | None:
    """A Redis DB of this run's own, leased on DB 0 so concurrent runs never share one
    (Celery's queue and result keys are not under our key prefix). Released when this
    process exits; a lease whose run is gone is taken over. None: every DB is leased."""
    if os.environ.get("FLEXITASKS_TEST_DB"):
        return int(os.environ["FLEXITASKS_TEST_DB"])
    try:
        lessor = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_connect_timeout=1)
        for db in range(8, 16):
            key = LEASE_KEY.format(db)
            taken = lessor.set(key, LEASE_VALUE, nx=True, ex=1800)
            if not taken:
                held = lessor.get(key)
                taken = _holder_gone(held) and bool(lessor.eval(_TAKE_OVER, 1, key, held, LEASE_VALUE))
            if taken:
                atexit.register(_release, db)
                return db
    except redis.RedisError:
        return 15  # no Redis: the fixtures report it (and fail under CI=true)
    return None


def _release(db: int) -> None:
    with contextlib.suppress(redis.RedisError):
        lessor = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=0, socket_connect_timeout=1)
        lessor.eval(_RELEASE, 1, LEASE_KEY.format(db), LEASE_VALUE)


_LEASED = lease_db()
TEST_DB = 15 if _LEASED is None else _LEASED
KEY_PREFIX = f"ft-test-{RUN_ID}"
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/{TEST_DB}"
ROOT = Path(__file__).resolve().parent.parent


PRIMARY_PORT, SECONDARY_PORT = free_port(), free_port()
WORKDIR = Path(tempfile.mkdtemp(prefix="flexitasks-test-"))
_LIMITS = {"timeout": 10.0, "connect_timeout": 1.0, "first_token_timeout": 1.5, "stall_timeout": 1.0}
SETTINGS = Settings.model_validate({
    "source": "<tests/conftest.py>",
    "celery": {"broker_url": REDIS_URL, "result_backend": REDIS_URL, "max_task_retries": 1,
               "retry_backoff": 1, "retry_backoff_max": 1},
    "sync": {"redis_url": REDIS_URL, "channel": f"{KEY_PREFIX}:events", "key_prefix": KEY_PREFIX,
             "resync_interval": 2.0, "heartbeat_interval": 1.0},
    "breaker": {"failure_threshold": 5, "window": 60.0, "recovery_timeout": 2.0, "max_recovery_timeout": 8.0},
    "retry": {"same_provider_backoff": 0.05, "rate_limit_backoff": 0.1, "retry_after_wait_max": 2.0,
              "request_timeout": 20.0},
    "providers": [
        {"name": "primary", "kind": "openai", "model": "gpt-4o-mini", "priority": 1,
         "api_key_env": "FLEXITASKS_TEST_PRIMARY_KEY", "base_url": f"http://127.0.0.1:{PRIMARY_PORT}/v1", **_LIMITS,
         "price": {"input_per_million": 1.0, "output_per_million": 2.0}},
        {"name": "secondary", "kind": "anthropic", "model": "claude-sonnet-4-5", "priority": 2,
         "api_key_env": "FLEXITASKS_TEST_SECONDARY_KEY", "base_url": f"http://127.0.0.1:{SECONDARY_PORT}",
         **_LIMITS, "price": {"input_per_million": 3.0, "output_per_million": 15.0}},
    ],
})
"""The tests' settings, built in code. This process's app uses them directly; worker
subprocesses (and the CLI) read the same settings from ``CONFIG``."""
CONFIG = WORKDIR / "flexitasks.toml"
CONFIG.write_text(SETTINGS.to_toml())
os.environ["FLEXITASKS_CONFIG"] = str(CONFIG)
os.environ["FLEXITASKS_TEST_PRIMARY_KEY"] = "sk-test-primary-" + RUN_ID
os.environ["FLEXITASKS_TEST_SECONDARY_KEY"] = "sk-ant-test-secondary-" + RUN_ID
for var in ("FLEXITASKS_BROKER_URL", "FLEXITASKS_RESULT_BACKEND", "FLEXITASKS_REDIS_URL"):
    os.environ.pop(var, None)
app.use_settings(SETTINGS)


def redis_available() -> bool:
    try:
        return bool(redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def require_redis() -> None:
    if _LEASED is None:
        pytest.fail("every test Redis DB (8-15) is leased by another running test session; "
                    "wait for one to end, or set FLEXITASKS_TEST_DB")
    if redis_available():
        return
    message = f"Redis is not answering on {REDIS_HOST}:{REDIS_PORT}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message + " (CI=true: a missing Redis fails the run)")
    pytest.skip(message)


def prefixed_keys(client: redis.Redis, prefix: str) -> list[bytes]:
    """Keys under ``prefix``, hash-tagged (``{prefix...``, flexitasks/keys.py) or not."""
    return [k for pattern in (f"{prefix}*", f"{{{prefix}*") for k in client.scan_iter(match=pattern, count=500)]


def delete_prefix(client: redis.Redis, prefix: str) -> None:
    keys = prefixed_keys(client, prefix)
    if keys:
        client.delete(*keys)


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis]:
    require_redis()
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=TEST_DB)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture(scope="session")
def fakes() -> Iterator[dict[str, object]]:
    from flexitasks.fake_provider import FakeProvider

    with FakeProvider(name="primary", port=PRIMARY_PORT) as p, FakeProvider(name="secondary", port=SECONDARY_PORT) as s:
        yield {"primary": p, "secondary": s}


def start_worker(
    *extra: str, name: str = "w1", concurrency: int = 4, pool: str = "prefork", config: Path | None = None
) -> subprocess.Popen[bytes]:
    """A ``celery worker``; ``config``: another settings file than the tests' own."""
    log = open(WORKDIR / f"worker-{name}.log", "ab")  # noqa: SIM115  (owned by the process)
    env = os.environ.copy()
    if config is not None:
        env["FLEXITASKS_CONFIG"] = str(config)
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "flexitasks", "worker", "--pool", pool,
         "--concurrency", str(concurrency), "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
         "--without-mingle", *extra],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )


def wait_for_worker(name: str, timeout: float = 60.0) -> None:
    def answered() -> bool:
        replies = app.control.ping(timeout=0.5) or []
        return any(name in r for reply in replies for r in reply)

    wait_until(answered, timeout, interval=0, what=f"worker {name} to answer ping (logs in {WORKDIR})")


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    stop_process(proc, timeout=20)


@pytest.fixture(scope="session")
def worker(redis_client: redis.Redis, fakes: dict[str, object]) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_worker(name="w1")
    try:
        wait_for_worker("w1@")
        yield proc
    finally:
        stop_worker(proc)


@pytest.fixture()
def clean(fakes: dict[str, object], redis_client: redis.Redis) -> Iterator[dict[str, object]]:
    """Healthy fakes with zeroed counters, every breaker closed."""
    from flexitasks.breaker.redis_store import RedisBreakerStore
    from flexitasks.breaker.store import BreakerState

    store = RedisBreakerStore(redis_client, key_prefix=KEY_PREFIX, channel=SETTINGS.sync.channel)
    for fp in fakes.values():
        fp.admin.reset()  # type: ignore[attr-defined]
    for p in SETTINGS.providers:
        store.force(p.name, SETTINGS.breaker_policy(p), BreakerState.CLOSED)
    time.sleep(0.1)
    yield fakes


@contextlib.contextmanager
def scratch_redis(prefix: str) -> Iterator[redis.Redis]:
    """A client of the leased DB (a hung command fails after 5 s); every key under
    ``prefix`` is deleted afterwards."""
    require_redis()
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    try:
        yield client
    finally:
        delete_prefix(client, prefix)
        client.close()


class _Records(logging.Handler):
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def log_records(name: str, level: int = logging.DEBUG) -> Iterator[list[logging.LogRecord]]:
    """The records of logger ``name`` at ``level`` and above meanwhile, caught on the logger
    itself, enabled for the while: a dictConfig earlier in the session may have disabled
    existing loggers or stopped their propagation (so ``caplog`` would see nothing)."""
    logger, handler = logging.getLogger(name), _Records(level)
    disabled, old_level = logger.disabled, logger.level
    logger.disabled, logger.level = False, level
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.disabled, logger.level = disabled, old_level


# ---------------------------------------------------------- one in-process fake provider per module


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvider]:
    """The module's own fake provider, named "fake" (a module overrides this for another name)."""
    from flexitasks.fake_provider import FakeProvider

    with FakeProvider(name="fake") as provider:
        yield provider


@pytest.fixture()
def fp(fake: FakeProvider) -> FakeProvider:
    """The module's fake provider, reset to healthy with zeroed counters."""
    fake.admin.reset()
    return fake


@pytest.fixture()
def oai(fp: FakeProvider) -> openai.OpenAI:
    import openai

    return openai.OpenAI(api_key="sk-test", base_url=fp.openai_base_url, max_retries=0, timeout=5)


@pytest.fixture()
def ant(fp: FakeProvider) -> anthropic.Anthropic:
    import anthropic

    return anthropic.Anthropic(api_key="sk-ant", base_url=fp.anthropic_base_url, max_retries=0, timeout=5)
