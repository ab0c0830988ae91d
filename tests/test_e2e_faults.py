"""Failure conduct, one test per fault (README table), through a real
``celery worker --concurrency 4`` (prefork), real Redis and the official SDKs talking
HTTP to the fake providers.

Attempt counts and spacing are read from each fake provider's own request log (what the
provider saw, stamped with ``time.monotonic()`` in this process), never from the
client's account. Test config (tests/conftest.py): same_provider_backoff 0.05,
rate_limit_backoff 0.1, retry_after_wait_max 2, request_timeout 20; providers
first_token_timeout 1.5, stall_timeout 1.0; breaker threshold 5, recovery 2 s (max 8).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import redis
from conftest import SETTINGS

from flexitasks import AllProvidersFailed, ContentRejected, chat_task
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerSnapshot, BreakerState
from flexitasks.harness import wait_until

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Summarise this ticket"}]
RETRY = SETTINGS.retry
PRIMARY = SETTINGS.provider("primary")
BREAKER = SETTINGS.breaker
EPS = 0.02  # clock granularity between the worker's sleep and the fake's log stamps


def full_answer(name: str) -> str:
    return f"{name}: Summarise this ticket"


def log(fp: Any) -> list[dict[str, Any]]:
    return fp.admin.requests()


def gaps(entries: list[dict[str, Any]]) -> list[float]:
    return [b["mono"] - a["mono"] for a, b in itertools.pairwise(entries)]


def breaker(redis_client: redis.Redis, name: str = "primary") -> BreakerSnapshot:
    store = RedisBreakerStore(
        redis_client, key_prefix=SETTINGS.sync.key_prefix, channel=SETTINGS.sync.channel
    )
    return store.snapshot([name])[name]


def outcomes(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["provider"], a["outcome"]) for a in result["attempts"]]


# ---------------------------------------------------------------- 429 with Retry-After


def test_429_short_retry_after_is_waited_out_on_the_primary_and_cools_the_fleet(clean, redis_client):
    ra = 1.5
    assert ra <= RETRY.retry_after_wait_max
    clean["primary"].admin.set_fault(status=429, retry_after=ra, count=1)
    first = chat_task.delay(MESSAGES)
    wait_until(lambda: breaker(redis_client).state is BreakerState.OPEN, 10, interval=0.01, what="the breaker to open")
    others = [chat_task.delay(MESSAGES) for _ in range(3)]  # other processes, inside the window

    result = first.get(timeout=30)
    assert result["provider"] == "primary" and result["content"] == full_answer("primary")
    assert outcomes(result) == [("primary", "error"), ("primary", "ok")]
    assert result["attempts"][0]["error"].startswith("rate_limited 429")
    for other in others:
        r = other.get(timeout=30)
        assert r["provider"] == "secondary"
        assert outcomes(r) == [("primary", "skipped"), ("secondary", "ok")]

    seen = log(clean["primary"])
    assert [e["status"] for e in seen] == [429, 200]
    assert gaps(seen)[0] >= ra - EPS  # nobody, in any process, called it before Retry-After passed
    window_end = seen[0]["mono"] + ra
    assert all(e["mono"] < window_end for e in log(clean["secondary"]))  # the others really were inside it


def test_429_long_retry_after_fails_over_at_once_and_the_fleet_skips_the_primary(clean, redis_client):
    ra = 3.0
    assert ra > RETRY.retry_after_wait_max
    clean["primary"].admin.set_fault(status=429, retry_after=ra, count=1)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "secondary"
    assert outcomes(result) == [("primary", "error"), ("secondary", "ok")]
    assert result["latency_ms"] < (ra - 1) * 1000  # failed over at once, did not wait the 3 s
    t429 = log(clean["primary"])[0]["mono"]

    during = [chat_task.delay(MESSAGES) for _ in range(4)]
    for r in (d.get(timeout=30) for d in during):
        assert r["provider"] == "secondary" and r["attempts"][0]["outcome"] == "skipped"
    assert len(log(clean["primary"])) == 1

    time.sleep(max(t429 + ra + 0.1 - time.monotonic(), 0))
    assert chat_task.delay(MESSAGES).get(timeout=30)["provider"] == "primary"
    seen = log(clean["primary"])
    assert [e["status"] for e in seen] == [429, 200]
    assert gaps(seen)[0] >= ra - EPS


def test_429_long_retry_after_with_nowhere_to_go_waits_for_the_cooldown(clean):
    ra = 3.0
    clean["primary"].admin.set_fault(status=429, retry_after=ra, count=1)
    clean["secondary"].admin.set_fault(status=529)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "primary" and result["content"] == full_answer("primary")
    assert outcomes(result) == [
        ("primary", "error"),
        ("secondary", "error"),
        ("secondary", "error"),
        ("primary", "ok"),
    ]
    seen = log(clean["primary"])
    assert [e["status"] for e in seen] == [429, 200]
    assert gaps(seen)[0] >= ra - EPS
    assert result["latency_ms"] < RETRY.request_timeout * 1000
    assert [e["status"] for e in log(clean["secondary"])] == [529, 529]


def test_a_come_back_is_not_a_failed_run_and_a_failed_run_starts_afresh(clean):
    """Run 1: the primary asks for 3 s, the secondary fails twice: the run comes back for the
    primary. Run 2 resumes (the secondary is done for it) and the primary fails: the first
    failed run, so Celery retries it (max_task_retries 1). Run 3 starts afresh and calls the
    secondary again. Counting the come-back as a failed run, or carrying run 1's state into
    run 3, would leave the secondary at 2 calls."""
    assert SETTINGS.celery.max_task_retries == 1 and RETRY.retry_after_wait_max < 3.0
    clean["primary"].admin.set_fault(status=429, retry_after=3.0, count=1)
    clean["secondary"].admin.set_fault(status=500)
    pending = chat_task.delay(MESSAGES)
    wait_until(lambda: log(clean["primary"]), 10, what="the 429")
    clean["primary"].admin.set_fault(status=500)  # after the come-back it fails too
    with pytest.raises(AllProvidersFailed):
        pending.get(timeout=30)
    assert [e["status"] for e in log(clean["primary"])] == [429, 500]  # run 3: skipped (breaker open)
    assert len(log(clean["secondary"])) == 4  # two calls (one retry) in each of runs 1 and 3


# ---------------------------------------------------------------- 429 without Retry-After


def test_429_without_retry_after_backs_off_then_fails_over(clean):
    clean["primary"].admin.set_fault(status=429)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "secondary" and result["content"] == full_answer("secondary")
    n = RETRY.rate_limit_attempts
    assert outcomes(result) == [("primary", "error")] * n + [("secondary", "ok")]
    seen = log(clean["primary"])
    assert [e["status"] for e in seen] == [429] * n
    for k, gap in enumerate(gaps(seen)):  # exponential, and never closer than half the nominal wait
        assert gap >= RETRY.rate_limit_backoff * 2**k / 2 - 0.005


def test_429_burst_from_many_tasks_is_bounded_at_the_provider(clean, redis_client):
    clean["primary"].admin.set_fault(status=429)
    results = [r.get(timeout=60) for r in [chat_task.delay(MESSAGES) for _ in range(12)]]
    assert all(r["provider"] == "secondary" for r in results)
    seen = log(clean["primary"])
    # the breaker opens at the threshold; at most the 3 other pool processes had a call in flight
    assert len(seen) <= BREAKER.failure_threshold + 3
    assert breaker(redis_client).state is BreakerState.OPEN


# ---------------------------------------------------------------- 5xx


def test_500_once_is_retried_on_the_primary_after_a_short_pause(clean):
    clean["primary"].admin.set_fault(status=500, count=1)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "primary" and result["content"] == full_answer("primary")
    assert outcomes(result) == [("primary", "error"), ("primary", "ok")]
    seen = log(clean["primary"])
    assert [e["status"] for e in seen] == [500, 200]
    assert RETRY.same_provider_backoff / 2 - 0.005 <= gaps(seen)[0] < 1.0
    assert log(clean["secondary"]) == []


@pytest.mark.parametrize("status", [503, 529])
def test_503_529_persistent_fails_over_and_opens_the_breaker(clean, redis_client, status):
    clean["primary"].admin.set_fault(status=status)
    results = [chat_task.delay(MESSAGES).get(timeout=30) for _ in range(4)]  # one after another
    assert all(r["provider"] == "secondary" for r in results)
    assert all(r["latency_ms"] < 2000 for r in results)
    # two calls per task (one same-provider retry) until the 5th failure opens the breaker
    assert [e["status"] for e in log(clean["primary"])] == [status] * BREAKER.failure_threshold
    assert outcomes(results[-1]) == [("primary", "skipped"), ("secondary", "ok")]
    assert breaker(redis_client).state is BreakerState.OPEN


# ---------------------------------------------------------------- connection faults


def test_connection_reset_once_is_retried_and_answered(clean):
    clean["primary"].admin.set_fault(mode="reset", count=1)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "primary" and result["content"] == full_answer("primary")
    assert [e["fault"] for e in log(clean["primary"])] == ["reset", None]


def test_connection_reset_persistent_fails_over(clean):
    clean["primary"].admin.set_fault(mode="reset")
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "secondary" and result["content"] == full_answer("secondary")
    assert len(log(clean["primary"])) == 1 + RETRY.same_provider_retries
    assert "connection" in result["attempts"][0]["error"]


def test_silent_provider_fails_over_once_within_the_deadline(clean):
    clean["primary"].admin.set_fault(mode="hang")
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "secondary" and result["content"] == full_answer("secondary")
    assert len(log(clean["primary"])) == 1  # a silent provider is not retried on the same route
    assert result["attempts"][0]["error"].startswith("timeout")
    waited = log(clean["secondary"])[0]["mono"] - log(clean["primary"])[0]["mono"]
    assert PRIMARY.first_token_timeout - EPS <= waited < PRIMARY.first_token_timeout + 1.0
    assert result["latency_ms"] < RETRY.request_timeout * 1000


# ---------------------------------------------------------------- stream faults


def test_late_first_token_fails_over(clean):
    clean["primary"].admin.set_fault(first_token_delay=PRIMARY.first_token_timeout + 2)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "secondary" and result["content"] == full_answer("secondary")
    assert len(log(clean["primary"])) == 1
    assert "first_token_timeout" in result["attempts"][0]["error"]
    waited = log(clean["secondary"])[0]["mono"] - log(clean["primary"])[0]["mono"]
    assert PRIMARY.first_token_timeout - EPS <= waited < PRIMARY.first_token_timeout + 1.0


def test_stalled_stream_fails_over_with_a_complete_answer(clean):
    clean["primary"].admin.set_fault(stall_after_chunks=1, stall_seconds=PRIMARY.stall_timeout + 2)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "secondary"
    assert result["content"] == full_answer("secondary") and result["finish_reason"] == "end_turn"
    assert len(log(clean["primary"])) == 1
    assert "stall" in result["attempts"][0]["error"]
    waited = log(clean["secondary"])[0]["mono"] - log(clean["primary"])[0]["mono"]
    assert waited >= PRIMARY.stall_timeout - EPS
    # given up at stall_timeout itself, not at the longer first-token socket timeout
    assert result["attempts"][0]["latency_ms"] / 1000 < PRIMARY.first_token_timeout - 0.1


@pytest.mark.parametrize("mode", ["truncate", "malformed"])
def test_cut_or_malformed_stream_is_never_an_answer(clean, mode):
    clean["primary"].admin.set_fault(mode=mode)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "secondary"
    assert result["content"] == full_answer("secondary") and result["finish_reason"] == "end_turn"
    assert len(log(clean["primary"])) == 1 + RETRY.same_provider_retries  # restarted cleanly once
    assert all(a["error"].startswith("truncated") for a in result["attempts"] if a["outcome"] == "error")


@pytest.mark.parametrize("mode", ["truncate", "malformed"])
def test_cut_or_malformed_stream_with_nowhere_to_go_is_a_clear_error(clean, mode):
    clean["secondary"].admin.set_fault(mode=mode)
    with pytest.raises(AllProvidersFailed, match="secondary: truncated") as info:
        chat_task.delay(MESSAGES, providers=["secondary"]).get(timeout=60)
    assert "secondary:" in str(info.value)
    runs = 1 + SETTINGS.celery.max_task_retries
    assert len(log(clean["secondary"])) == runs * (1 + RETRY.same_provider_retries)


@pytest.mark.parametrize("name", ["primary", "secondary"])
def test_stream_without_done_but_complete_finishes_promptly_with_usage(clean, name):
    clean[name].admin.set_fault(mode="no_done")
    result = chat_task.delay(MESSAGES, providers=[name]).get(timeout=30)
    assert result["provider"] == name and result["content"] == full_answer(name)
    assert result["usage"]["input_tokens"] > 0 and result["usage"]["output_tokens"] == 4
    assert outcomes(result) == [(name, "ok")]
    assert result["latency_ms"] < PRIMARY.first_token_timeout * 1000  # no read timeout waited out
    assert [(e["fault"], e["status"]) for e in log(clean[name])] == [("no_done", 200)]


# ---------------------------------------------------------------- 400s


def test_context_length_goes_to_the_next_provider_without_blame(clean, redis_client):
    clean["primary"].admin.set_fault(status=400, error_code="context_length_exceeded")
    n = BREAKER.failure_threshold + 1
    results = [chat_task.delay(MESSAGES).get(timeout=30) for _ in range(n)]
    assert all(r["provider"] == "secondary" for r in results)
    assert all(outcomes(r) == [("primary", "error"), ("secondary", "ok")] for r in results)
    assert results[0]["attempts"][0]["error"].startswith("context_length 400")
    assert [e["status"] for e in log(clean["primary"])] == [400] * n  # once per task, never skipped
    snap = breaker(redis_client)
    assert snap.state is BreakerState.CLOSED and snap.failures == 0


def test_content_policy_fails_with_the_providers_reason(clean, redis_client):
    clean["primary"].admin.set_fault(status=400, error_code="content_policy_violation")
    with pytest.raises(ContentRejected, match="safety system") as info:
        chat_task.delay(MESSAGES).get(timeout=30)
    assert "primary" in str(info.value)
    time.sleep(0.5)  # a Celery retry, were there one, would have called again by now
    assert [e["status"] for e in log(clean["primary"])] == [400]
    assert log(clean["secondary"]) == []
    assert breaker(redis_client).failures == 0


# ---------------------------------------------------------------- outage and recovery


def test_outage_served_by_fallback_probed_once_per_interval_then_back(clean):
    outage = 5.0
    clean["primary"].admin.set_fault(status=503)
    start = time.monotonic()
    results: list[tuple[float, dict[str, Any]]] = []
    heal: float | None = None
    while True:
        now = time.monotonic()
        if heal is None and now - start >= outage:
            clean["primary"].admin.clear()
            heal = time.monotonic()
        results.append((now, chat_task.delay(MESSAGES).get(timeout=30)))
        if heal is not None and results[-1][1]["provider"] == "primary":
            break
        assert now - start < outage + 2 * BREAKER.max_recovery_timeout, "primary never came back"
        time.sleep(0.15)
    assert heal is not None
    assert all(r["provider"] == "secondary" for t, r in results if t < heal)  # every task answered

    seen = log(clean["primary"])
    failed = [e for e in seen if e["status"] == 503]
    ok = [e for e in seen if e["status"] == 200]
    threshold = BREAKER.failure_threshold
    opened = failed[threshold - 1]["mono"]
    probes = failed[threshold:]
    assert all(e["mono"] < heal for e in failed)
    # once open: one probe per recovery interval (jitter shortens it by up to 10 %)
    floor = BREAKER.recovery_timeout * (1 - BREAKER.jitter) - EPS
    assert all(g >= floor for g in gaps([failed[threshold - 1], *probes, ok[0]]))
    assert len(probes) <= (heal - opened) / floor + 1
    # back on the primary within one recovery interval (the one in force) of its return
    interval = min(BREAKER.recovery_timeout * 2 ** len(probes), BREAKER.max_recovery_timeout)
    slack = 0.5  # this loop sends a task every ~0.2 s: the probe waits for the next one
    assert ok[0]["mono"] - heal <= interval + slack
    assert ok[0]["mono"] - (probes[-1]["mono"] if probes else opened) <= interval + slack


# ---------------------------------------------------------------- any failover


def test_failover_result_is_the_answering_providers_alone(clean):
    reference = chat_task.delay(MESSAGES, providers=["secondary"]).get(timeout=30)
    clean["primary"].admin.set_fault(status=500)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "secondary" and result["model"] == "claude-sonnet-4-5"
    assert result["usage"] == reference["usage"]  # failed attempts cost no usage
    assert (
        result["usage"]["total_tokens"] == result["usage"]["input_tokens"] + result["usage"]["output_tokens"]
    )
    errors = [a for a in result["attempts"] if a["outcome"] == "error"]
    assert [a["provider"] for a in errors] == ["primary"] * (1 + RETRY.same_provider_retries)
    assert all(a["error"].startswith("unavailable 500") for a in errors)
    assert result["attempts"][-1]["provider"] == "secondary" and result["attempts"][-1]["outcome"] == "ok"
