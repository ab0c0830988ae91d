"""The operator's CLI without a worker: trip/reset/disable on Redis directly, check-config,
status's probe time and sources, usage errors, and the loud warning without a config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import CONFIG, KEY_PREFIX, REDIS_URL, ROOT, SETTINGS, WORKDIR, stop_worker

pytestmark = pytest.mark.usefixtures("redis_client")


def flexitasks(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flexitasks.cli", *args], cwd=cwd, env=env or os.environ.copy(),
                          capture_output=True, text=True, timeout=60)


def store_state(redis_client, provider: str) -> str:
    from flexitasks.breaker.redis_store import RedisBreakerStore

    store = RedisBreakerStore(redis_client, key_prefix=KEY_PREFIX, channel=f"{KEY_PREFIX}:events")
    return store.snapshot([provider])[provider].state.value


def test_trip_reset_and_disable_change_redis_with_no_worker_and_log_once(redis_client):
    for command, state in (("trip", "forced_open"), ("disable", "disabled"), ("reset", "closed")):
        started = time.monotonic()
        proc = flexitasks(command, "secondary")
        took = time.monotonic() - started
        assert proc.returncode == 0, proc.stderr
        assert store_state(redis_client, "secondary") == state, f"{command} took {took:.2f}s"
        assert f"-> {state}" in proc.stdout
        assert proc.stderr.count("breaker secondary:") == 1  # the one WARNING line of the transition
    again = flexitasks("reset", "secondary")
    assert again.returncode == 0 and "unchanged" in again.stdout


def test_usage_mistakes_are_one_message_and_exit_2():
    for args, says in ((["trip"], "required: provider"), (["trip", "nope"], "unknown provider 'nope'"),
                       (["frobnicate"], "invalid choice"), (["status", "--bogus"], "unrecognized arguments"),
                       (["check-config", str(WORKDIR / "missing.toml")], "configuration file not found")):
        proc = flexitasks(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert says in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_every_subcommand_has_a_description():
    from flexitasks.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, choice in sub.choices.items():  # type: ignore[attr-defined]
        helps = [a.help for a in sub._choices_actions if a.dest == name]  # type: ignore[attr-defined]
        assert helps and helps[0], f"{name} has no help line"
        if name not in ("fake-provider", "demo"):  # they hand their arguments to their own parsers
            assert choice.description, f"{name} has no description"


def test_check_config_summarises_a_valid_file_and_names_the_field_of_a_bad_one():
    proc = flexitasks("check-config", str(CONFIG))
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout and "primary (openai" in proc.stdout and "secondary (anthropic" in proc.stdout
    bad = WORKDIR / "bad.toml"
    bad.write_text('[[providers]]\nname = "x"\nkind = "nope"\nmodel = "m"\n')
    proc = flexitasks("check-config", str(bad))
    assert proc.returncode == 2
    assert "providers[0] (name='x').kind" in proc.stderr


def test_without_any_config_the_cli_says_so_loudly(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLEXITASKS_CONFIG"}
    proc = flexitasks("check-config", env=env, cwd=tmp_path)
    assert proc.returncode == 0
    assert "WARNING: no configuration" in proc.stderr and "NO providers" in proc.stderr


def test_status_says_what_it_read_and_when_an_open_breaker_may_probe(clean, redis_client):
    from flexitasks.breaker.redis_store import RedisBreakerStore

    store = RedisBreakerStore(redis_client, key_prefix=KEY_PREFIX, channel=SETTINGS.sync.channel)
    policy = SETTINGS.breaker_policy(SETTINGS.provider("secondary"))
    store.cool_down("secondary", policy, 120.0)  # OPEN for two minutes (a Retry-After)
    status = json.loads(flexitasks("status", "--json").stdout)
    snap = status["providers"]["secondary"]
    assert snap["state"] == "open" and snap["reason"] == "retry_after"
    assert 0 < snap["probe_in"] <= 120.0
    assert status["source"] == str(CONFIG) and status["redis_url"] == REDIS_URL
    text = flexitasks("status", env={**os.environ, "COLUMNS": "200"}).stdout
    assert f"config: {CONFIG}" in text and "next probe" in text and "in " in text
    assert flexitasks("reset", "secondary").returncode == 0


@pytest.mark.usefixtures("worker")
def test_chat_prints_the_answer_and_who_gave_it(clean):
    proc = flexitasks("chat", "hello there")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "primary: hello there"
    assert "primary (gpt-4o-mini)" in proc.stderr
    proc = flexitasks("chat", "hi", "--provider", "nope")
    assert proc.returncode == 1 and "InvalidRequest" in proc.stderr and "Traceback" not in proc.stderr


def test_a_worker_without_any_config_says_so_loudly(tmp_path, redis_client):
    env = {k: v for k, v in os.environ.items() if k != "FLEXITASKS_CONFIG"}
    env.update(FLEXITASKS_BROKER_URL=REDIS_URL, FLEXITASKS_RESULT_BACKEND=REDIS_URL, FLEXITASKS_REDIS_URL=REDIS_URL,
               PYTHONPATH=str(ROOT))
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "flexitasks", "worker", "--pool", "solo", "-Q", "ops-noconfig",
             "-n", "noconfig@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "no configuration" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.3)
        text = log.read_text()
        assert "WARNING" in text.split("no configuration")[0].splitlines()[-1]
        assert "NO providers" in text
    finally:
        stop_worker(proc)

