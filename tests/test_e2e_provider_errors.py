"""Provider errors real providers send (issue 11, items 1, 2, 5), through a real
``celery worker`` (prefork), real Redis and the official SDKs over HTTP to the fake
providers. What each provider saw is read from its own request log.

Test config (tests/conftest.py): primary is an OpenAI-kind provider, secondary an
Anthropic-kind one; first_token_timeout 1.5 s, same_provider_retries 1.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
from conftest import SETTINGS

from flexitasks import chat_task
from flexitasks.breaker.redis_store import RedisBreakerStore

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES = [{"role": "user", "content": "Summarise this ticket"}]


def outcomes(result: dict[str, Any]) -> list[tuple[str, str]]:
    return [(a["provider"], a["outcome"]) for a in result["attempts"]]


def failures_counted(redis_client: redis.Redis, name: str) -> int:
    store = RedisBreakerStore(redis_client, key_prefix=SETTINGS.sync.key_prefix, channel=SETTINGS.sync.channel)
    return store.snapshot([name])[name].failures


def test_anthropic_overloaded_event_after_200_is_retried_not_a_rejected_request(clean):
    clean["primary"].admin.set_fault(status=503)
    clean["secondary"].admin.set_fault(mode="error_event", error_code="overloaded_error", count=1)
    result = chat_task.delay(MESSAGES).get(timeout=60)
    assert result["provider"] == "secondary"
    assert result["content"] == "secondary: Summarise this ticket"
    assert outcomes(result)[-2:] == [("secondary", "error"), ("secondary", "ok")]
    assert result["attempts"][-2]["error"].startswith("unavailable: overloaded_error in the stream")


def test_openai_quota_exhausted_fails_over_at_once_without_blame(clean, redis_client):
    clean["primary"].admin.set_fault(status=429, error_code="insufficient_quota")
    result = chat_task.delay(MESSAGES).get(timeout=60)
    assert result["provider"] == "secondary"
    assert outcomes(result) == [("primary", "error"), ("secondary", "ok")]
    assert result["attempts"][0]["error"].startswith("billing 429")
    assert clean["primary"].admin.stats()["requests"] == 1  # no backoff-and-retry as for a rate limit
    assert failures_counted(redis_client, "primary") == 0


def test_silence_then_a_dropped_connection_goes_to_the_next_provider_at_once(clean):
    first_token = SETTINGS.provider("primary").first_token_timeout
    clean["primary"].admin.set_fault(latency=first_token / 2 + 0.3, mode="reset")
    result = chat_task.delay(MESSAGES).get(timeout=60)
    assert result["provider"] == "secondary"
    assert outcomes(result) == [("primary", "error"), ("secondary", "ok")]
    assert result["attempts"][0]["error"].startswith("timeout")
    assert clean["primary"].admin.stats()["requests"] == 1  # its wait is not paid twice
