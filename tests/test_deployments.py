"""Deployments sharing a Redis don't hear each other, and an event alone never moves an
operator state (issue 11, items 8 and 9's store check), with a real ``Subscriber`` thread on
the run's Redis DB. (Event signatures, item 9's HMAC: ``test_event_signatures.py``.)"""

from __future__ import annotations

import json
import time
import uuid

import redis

from flexitasks.breaker.gate import FleetGate
from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.config import Settings, parse_settings
from flexitasks.harness import wait_until
from flexitasks.sync.subscriber import Subscriber

PROVIDER = {"name": "p", "kind": "openai", "model": "m"}


def test_the_channel_derives_from_the_key_prefix():
    assert Settings().sync.channel == "flexitasks:events"
    assert parse_settings({"sync": {"key_prefix": "acme"}}, "t").sync.channel == "acme:events"
    assert parse_settings({"sync": {"key_prefix": "acme", "channel": "shared"}}, "t").sync.channel == "shared"


def start(client: redis.Redis, prefix: str, channel: str) -> tuple[Subscriber, RedisBreakerStore, Mirror]:
    settings = Settings.model_validate({"providers": [PROVIDER]})
    store = RedisBreakerStore(client, key_prefix=prefix, channel=channel)
    mirror = Mirror(["p"])
    gate = FleetGate(store, mirror, {"p": settings.breaker_policy(settings.providers[0])})
    sub = Subscriber(client, store, mirror, ["p"], channel=channel, key_prefix=prefix, resync_interval=60.0,
                     heartbeat_interval=60.0, set_degraded=gate.set_degraded)
    sub.start(wait=5.0)
    return sub, store, mirror


def forged(deployment: str | None, state: str, generation: int) -> str:
    event = {"v": 1, "type": "transition", "provider": "p", "state": state, "previous": "forced_open",
             "generation": generation, "open_until": 0.0, "probe_until": 0.0, "probe_owner": None,
             "reason": "forged", "at": time.time()}
    if deployment is not None:
        event["deployment"] = deployment
    return json.dumps(event)


def test_events_name_their_deployment_and_others_are_dropped_and_counted(redis_client: redis.Redis):
    prefix, channel = f"dep-{uuid.uuid4().hex[:8]}", f"shared-{uuid.uuid4().hex[:8]}"
    settings = Settings.model_validate({"providers": [PROVIDER]})
    policy = settings.breaker_policy(settings.providers[0])
    sub, store, mirror = start(redis_client, prefix, channel)
    try:
        listener = redis_client.pubsub()
        listener.subscribe(channel)
        wait_until(lambda: listener.get_message(timeout=0.1), 5, what="the subscription")
        store.force("p", policy, BreakerState.FORCED_OPEN)
        published = wait_until(lambda: listener.get_message(timeout=0.1), 5, what="the transition event")
        assert json.loads(published["data"])["deployment"] == prefix
        listener.close()
        wait_until(lambda: mirror.get("p").snapshot.state is BreakerState.FORCED_OPEN, 5, what="forced_open")

        redis_client.publish(channel, forged("another-deployment", "closed", 10**9))
        wait_until(lambda: sub.foreign_events == 1, 5, what="the foreign event to be counted")
        assert mirror.get("p").snapshot.state is BreakerState.FORCED_OPEN
        assert sub.view()["foreign_events"] == 1
    finally:
        sub.stop()


def test_an_event_never_overrides_an_operator_state_without_the_store(redis_client: redis.Redis):
    prefix = f"dep-{uuid.uuid4().hex[:8]}"
    channel = f"{prefix}:events"
    settings = Settings.model_validate({"providers": [PROVIDER]})
    policy = settings.breaker_policy(settings.providers[0])
    sub, store, mirror = start(redis_client, prefix, channel)
    try:
        forced = store.force("p", policy, BreakerState.FORCED_OPEN).snapshot
        wait_until(lambda: mirror.get("p").snapshot.state is BreakerState.FORCED_OPEN, 5, what="forced_open")
        applied = sub.applied_events
        for event in (forged(prefix, "closed", forced.generation + 10**9), forged(None, "closed", 10**9)):
            redis_client.publish(channel, event)  # anyone who can PUBLISH: same deployment, huge generation
        wait_until(lambda: sub.applied_events >= applied + 2, 5, what="both events to be handled")
        view = mirror.get("p").snapshot
        assert (view.state, view.generation) == (BreakerState.FORCED_OPEN, forced.generation)  # the store said so

        reset = store.force("p", policy, BreakerState.CLOSED).snapshot  # the operator's reset is believed
        wait_until(lambda: mirror.get("p").snapshot.state is BreakerState.CLOSED, 5, what="the real reset")
        assert mirror.get("p").snapshot.generation == reset.generation
    finally:
        sub.stop()


def test_anthropic_usage_includes_prompt_cache_tokens():
    """Item 21: input tokens read from the cache or written to it are billed input too."""
    from flexitasks.config import ProviderSettings
    from flexitasks.providers.anthropic_adapter import _Answer
    from flexitasks.providers.base import Reading
    from flexitasks.providers.deadlines import StreamWatch

    settings = ProviderSettings(name="a", kind="anthropic", model="claude")
    answer = _Answer("claude", StreamWatch(settings, 60.0), Reading(settings, None))
    usage = {"input_tokens": 12, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 2000,
             "output_tokens": 1}
    answer.feed("message_start", json.dumps({"type": "message_start", "message": {"model": "claude",
                                                                                    "usage": usage}}).encode())
    answer.feed("message_delta", json.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                             "usage": {"output_tokens": 7}}).encode())
    done = answer.completion()
    assert (done.input_tokens, done.output_tokens) == (2112, 7)


def test_processes_with_different_windows_add_to_the_same_counts(redis_client: redis.Redis):
    """Item 14: during a rolling deploy that changes ``window``, neither version erases the
    other's counts in the store (the Lua); the counts under way keep their bucket size."""
    from flexitasks.breaker.store import BreakerPolicy

    prefix = f"dep-{uuid.uuid4().hex[:8]}"
    store = RedisBreakerStore(redis_client, key_prefix=prefix, channel=f"{prefix}:events")
    old, new = BreakerPolicy(failure_threshold=4, window=60.0), BreakerPolicy(failure_threshold=4, window=30.0)
    for policy in (old, new, old):
        result = store.record_failure("p", policy)
    assert (result.snapshot.failures, result.snapshot.calls) == (3, 3)
    assert store.record_failure("p", new).snapshot.state is BreakerState.OPEN  # the fourth, from either version
