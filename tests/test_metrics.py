"""Per-call metrics: derived from a run's attempts, counted fleet-wide in Redis, exported.

The end-to-end tests read what real workers (prefork children, and a threads pool)
flushed, through ``flexitasks metrics --once``; the exporter's own behaviour without
Redis is checked on a real HTTP port.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import KEY_PREFIX, ROOT, WORKDIR, free_port, start_worker, stop_worker, wait_for_worker

from flexitasks.metrics.derive import Price, attempt_kind, failovers, observe_run

ERROR_500 = "unavailable 500: boom"


# -- pure derivation ---------------------------------------------------------------------------
def test_the_error_class_of_an_attempt_is_read_from_its_error():
    assert attempt_kind({"outcome": "error", "error": ERROR_500}) == "unavailable"
    assert attempt_kind({"outcome": "error", "error": "timeout: no first token"}) == "timeout"
    assert attempt_kind({"outcome": "skipped", "error": "circuit open"}) == "circuit_open"
    assert attempt_kind({"outcome": "skipped", "error": "cooling down, 1.20s left"}) == "cooling_down"
    assert attempt_kind({"outcome": "ok", "error": None}) == ""


def test_a_failover_is_each_move_to_another_provider():
    attempts = [{"provider": "a"}, {"provider": "a"}, {"provider": "b"}, {"provider": "c"}]
    assert failovers(attempts) == [("a", "b"), ("b", "c")]
    assert failovers([{"provider": "a"}]) == []


def test_a_failed_over_run_counts_calls_failovers_tokens_and_cost():
    attempts = [
        {"provider": "a", "outcome": "error", "error": ERROR_500, "latency_ms": 30.0},
        {"provider": "a", "outcome": "skipped", "error": "circuit open", "latency_ms": 0.0},
        {"provider": "b", "outcome": "ok", "error": None, "latency_ms": 400.0, "first_token_ms": 120.0},
    ]
    obs, cost = observe_run("ok", attempts, provider="b", usage={"input_tokens": 1000, "output_tokens": 500},
                            prices={"b": Price(3.0, 15.0)})
    assert cost == pytest.approx((1000 * 3.0 + 500 * 15.0) / 1e6)
    assert obs.counters == {
        ("requests_total", ("ok",)): 1,
        ("provider_calls_total", ("a", "error", "unavailable")): 1,
        ("provider_calls_total", ("a", "skipped", "circuit_open")): 1,
        ("provider_calls_total", ("b", "ok", "")): 1,
        ("failovers_total", ("a", "b")): 1,
        ("tokens_total", ("b", "input")): 1000,
        ("tokens_total", ("b", "output")): 500,
        ("cost_usd_total", ("b",)): pytest.approx(cost),
    }
    assert ("call_duration_seconds", "b", 0.4) in obs.samples
    assert ("time_to_first_token_seconds", "b", 0.12) in obs.samples
    assert not any(p == "a" and h == "call_duration_seconds" and v == 0.0 for h, p, v in obs.samples)


def test_no_price_no_cost():
    _, cost = observe_run("ok", [{"provider": "b", "outcome": "ok"}], provider="b",
                          usage={"input_tokens": 1, "output_tokens": 1}, prices={})
    assert cost is None


def test_recording_costs_microseconds_and_the_flush_is_one_pipeline(redis_client):
    """The per-call price of counting: ``record`` is in-memory; Redis sees one pipeline per flush."""
    from flexitasks.metrics.counters import MetricsRecorder, read_totals

    prefix = f"{KEY_PREFIX}-cost"
    recorder = MetricsRecorder(redis_client, prefix, interval=3600)
    attempts = [{"provider": "a", "outcome": "error", "error": ERROR_500, "latency_ms": 3.0},
                {"provider": "b", "outcome": "ok", "error": None, "latency_ms": 40.0}]
    runs = 5000
    started = time.perf_counter()
    for _ in range(runs):
        obs, _ = observe_run("ok", attempts, provider="b", usage={"input_tokens": 10, "output_tokens": 20})
        recorder.record(obs)
    per_run_us = (time.perf_counter() - started) / runs * 1e6
    started = time.perf_counter()
    assert recorder.flush()
    flush_ms = (time.perf_counter() - started) * 1000
    print(f"\nmetrics cost: derive+record {per_run_us:.1f} us per run; one flush {flush_ms:.2f} ms")
    (WORKDIR / "metrics-cost.txt").write_text(f"{per_run_us:.1f} us per run; flush {flush_ms:.2f} ms\n")
    totals = read_totals(redis_client, prefix)
    assert totals[("requests_total", "ok")] == runs
    assert totals[("failovers_total", "a", "b")] == runs
    assert totals[("call_duration_seconds_bucket", "b", "0.05")] == runs


def test_a_flush_that_meets_redis_down_keeps_the_counts():
    import redis

    from flexitasks.metrics.counters import MetricsRecorder

    recorder = MetricsRecorder(redis.Redis(port=1, socket_connect_timeout=0.2), "x", interval=3600)
    obs, _ = observe_run("ok", [{"provider": "b", "outcome": "ok"}])
    recorder.record(obs)
    assert recorder.flush() is False
    assert recorder._totals  # kept for the next try


# -- fleet-wide, through real workers ----------------------------------------------------------
def scrape() -> dict[str, float]:
    proc = subprocess.run([sys.executable, "-m", "flexitasks.cli", "metrics", "--once"], cwd=ROOT,
                          env=os.environ.copy(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def wait_for(check: Callable[[dict[str, float]], bool], timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        values = scrape()
        if check(values):
            return values
        assert time.monotonic() < deadline, f"metrics never got there: {values}"
        time.sleep(0.5)


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


OK_SECONDARY = 'flexitasks_provider_calls_total{kind="",outcome="ok",provider="secondary"}'
REQUESTS_OK = 'flexitasks_requests_total{outcome="ok"}'
FAILOVERS = 'flexitasks_failovers_total{from_provider="primary",to_provider="secondary"}'


@pytest.mark.usefixtures("worker")
def test_prefork_children_count_every_call_of_a_failed_over_run(clean):
    from flexitasks import chat_task

    before = scrape()
    clean["primary"].admin.set_fault(status=500)
    results = [r.get(timeout=60) for r in
               [chat_task.delay([{"role": "user", "content": f"hi {i}"}]) for i in range(12)]]
    assert {r["provider"] for r in results} == {"secondary"}
    after = wait_for(lambda v: delta(v, before, REQUESTS_OK) >= 12 and delta(v, before, OK_SECONDARY) >= 12)
    time.sleep(1.5)  # one more flush interval: nothing is counted twice
    after = scrape()
    assert delta(after, before, REQUESTS_OK) == 12
    assert delta(after, before, OK_SECONDARY) == 12
    assert delta(after, before, FAILOVERS) == 12
    calls = [r for res in results for r in res["attempts"] if r["provider"] == "primary"]
    errors = sum(1 for a in calls if a["outcome"] == "error")
    skips = sum(1 for a in calls if a["outcome"] == "skipped")
    key = 'flexitasks_provider_calls_total{kind="%s",outcome="%s",provider="primary"}'
    assert delta(after, before, key % ("unavailable", "error")) == errors
    assert delta(after, before, key % ("circuit_open", "skipped")) == skips
    tokens_out = sum(r["usage"]["output_tokens"] for r in results)
    assert delta(after, before, 'flexitasks_tokens_total{direction="output",provider="secondary"}') == tokens_out
    cost = sum(r["cost_usd"] for r in results)
    assert cost > 0
    assert delta(after, before, 'flexitasks_cost_usd_total{provider="secondary"}') == pytest.approx(cost, rel=1e-6)
    assert delta(after, before, 'flexitasks_call_duration_seconds_count{provider="secondary"}') == 12
    answered = [a for r in results for a in r["attempts"] if a["outcome"] == "ok"]
    assert all(a["first_token_ms"] is not None and a["first_token_ms"] <= a["latency_ms"] for a in answered)
    assert delta(after, before, 'flexitasks_time_to_first_token_seconds_count{provider="secondary"}') == 12
    assert after['flexitasks_call_duration_seconds_bucket{le="+Inf",provider="secondary"}'] == \
        after['flexitasks_call_duration_seconds_count{provider="secondary"}']
    assert after["flexitasks_redis_up"] == 1.0


@pytest.mark.usefixtures("redis_client", "fakes")
def test_a_threads_pool_counts_concurrent_runs_exactly(clean):
    from flexitasks import chat_task

    proc = start_worker("--pool", "threads", "-Q", "ops-threads", name="threads", concurrency=8)
    try:
        wait_for_worker("threads@")
        before = scrape()
        pending = [chat_task.apply_async([[{"role": "user", "content": f"t{i}"}]], queue="ops-threads")
                   for i in range(24)]
        assert all(r.get(timeout=60)["provider"] == "primary" for r in pending)
        ok_primary = 'flexitasks_provider_calls_total{kind="",outcome="ok",provider="primary"}'
        wait_for(lambda v: delta(v, before, ok_primary) >= 24)
        time.sleep(1.5)
        after = scrape()
        assert delta(after, before, ok_primary) == 24
        assert delta(after, before, REQUESTS_OK) == 24
    finally:
        stop_worker(proc)


# -- the exporter's own behaviour --------------------------------------------------------------
def listening_addresses(port: int) -> set[str]:
    """Local addresses listening on ``port`` (from /proc/net/tcp: hex, little-endian IPv4)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:
            found.add(".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_the_exporter_starts_and_answers_without_redis_on_loopback_only():
    port = free_port()
    env = {**os.environ, "FLEXITASKS_REDIS_URL": "redis://127.0.0.1:1/0"}
    proc = subprocess.Popen([sys.executable, "-m", "flexitasks.cli", "metrics", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                break
            except OSError:
                assert proc.poll() is None, f"the exporter exited: {proc.stdout.read() if proc.stdout else ''}"
                assert time.monotonic() < deadline, "the exporter never answered"
                time.sleep(0.2)
        assert re.search(r"^flexitasks_redis_up 0\.0$", body, re.M)
        assert "flexitasks_breaker_state" not in body
        assert listening_addresses(port) == {"127.0.0.1"}
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)
