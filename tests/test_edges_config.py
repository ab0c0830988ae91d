"""Sharing a broker with others, Retry-After, operator states (issue 11, items 7, 6, 10):
config, policy and store, without a worker (the queue's end-to-end half is
tests/test_e2e_own_queue.py)."""

from __future__ import annotations

import uuid

import pytest
import redis

from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.celery_app import celery_config
from flexitasks.config import RetrySettings, Settings, parse_settings
from flexitasks.delivery import visibility_timeout
from flexitasks.errors import ConfigError
from flexitasks.failover.policy import default_policy
from flexitasks.failures import FailureKind, ProviderFailure

PROVIDER = {"name": "p", "kind": "openai", "model": "m"}


# -- item 7: a queue of our own, Celery options passed through ----------------------------------------
def test_tasks_go_to_a_flexitasks_queue_by_default_and_workers_consume_only_it():
    conf = celery_config(Settings())
    assert conf["task_default_queue"] == "flexitasks"  # the queue tasks go to and `celery worker` consumes
    assert celery_config(parse_settings({"celery": {"queue": "llm"}}, "t"))["task_default_queue"] == "llm"


def test_celery_options_pass_through_and_a_table_is_merged_into_ours():
    settings = parse_settings({"celery": {"options": {
        "broker_transport_options": {"priority_steps": [0, 5, 9]},
        "worker_max_tasks_per_child": 100,
    }}}, "t")
    conf = celery_config(settings)
    assert conf["worker_max_tasks_per_child"] == 100
    assert conf["broker_transport_options"] == {"visibility_timeout": visibility_timeout(settings),
                                                "priority_steps": [0, 5, 9]}


def test_task_events_are_off_as_in_celery_unless_asked_for():
    def events(settings: Settings) -> tuple[object, object]:
        conf = celery_config(settings)
        return conf["worker_send_task_events"], conf["task_send_sent_event"]

    assert events(Settings()) == (False, False)
    assert events(parse_settings({"celery": {"task_events": True}}, "t")) == (True, True)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"broker_transprot_options": {}}, "not Celery settings: broker_transprot_options"),
        ({"CELERY_ACKS_LATE": True}, "not Celery settings: CELERY_ACKS_LATE"),
        ({"task_serializer": "pickle"}, "task_serializer (JSON only)"),
        ({"task_default_queue": "x"}, "task_default_queue (celery.queue)"),
    ],
)
def test_unknown_or_protected_celery_options_are_rejected(options, needle):
    with pytest.raises(ConfigError) as info:
        parse_settings({"celery": {"options": options}}, "flexitasks.toml")
    assert "celery.options" in str(info.value) and needle in str(info.value)


# -- item 6: Retry-After is capped ---------------------------------------------------------------------
def test_a_day_long_retry_after_cools_a_provider_down_for_at_most_retry_after_max():
    assert Settings().retry.retry_after_max == Settings().breaker.max_recovery_timeout == 60.0
    policy = default_policy(Settings().retry)
    day = ProviderFailure(FailureKind.RATE_LIMITED, "slow down", status=429, retry_after=86400)
    assert policy.decide(day, 0).cool_down == 60.0
    short = ProviderFailure(FailureKind.UNAVAILABLE, "busy", status=503, retry_after=3)
    assert policy.decide(short, 0).cool_down == 3
    assert default_policy(RetrySettings(retry_after_max=10)).decide(day, 0).cool_down == 10
    uncapped = default_policy(RetrySettings())  # built without Settings: no cap known
    assert uncapped.decide(day, 0).cool_down == 86400


# -- item 10: operator states and generations never expire ---------------------------------------------
def test_operator_states_and_generations_have_no_ttl(redis_client: redis.Redis):
    prefix = f"edges-{uuid.uuid4().hex[:8]}"
    store = RedisBreakerStore(redis_client, key_prefix=prefix, channel=f"{prefix}:events")
    policy = Settings.model_validate({"providers": [PROVIDER]}).breaker_policy(Settings.model_validate(
        {"providers": [PROVIDER]}).providers[0])
    key = store.state_key("p")
    for state in (BreakerState.FORCED_OPEN, BreakerState.DISABLED):
        store.force("p", policy, state)
        assert redis_client.ttl(key) == -1, f"{state.value} must stay until reset"
    store.force("p", policy, BreakerState.CLOSED)
    redis_client.expire(key, 100)  # a key written by an earlier version, with its TTL
    result = store.cool_down("p", policy, 1.0)
    assert result.snapshot.generation == 4 and redis_client.ttl(key) == -1  # the generation lives on
