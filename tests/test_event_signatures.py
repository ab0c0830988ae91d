"""Events can't be forged (issue 11, item 9): with ``FLEXITASKS_EVENT_SECRET`` set, the Lua
signs each event (HMAC-SHA256, computed inside the script with the secret passed as ARGV,
never stored) and every process rejects unsigned, wrongly signed or stale events. A real
``Subscriber`` thread on the run's Redis DB; forged events are PUBLISHed as anyone could."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import time
import uuid

import redis

from flexitasks.breaker.gate import FleetGate
from flexitasks.breaker.mirror import Mirror
from flexitasks.breaker.redis_store import RedisBreakerStore
from flexitasks.breaker.store import BreakerState
from flexitasks.config import Settings
from flexitasks.harness import wait_until
from flexitasks.sync.subscriber import Subscriber

SECRET = "event-secret-" + uuid.uuid4().hex
SETTINGS = Settings.model_validate({"providers": [{"name": "p", "kind": "openai", "model": "m"}]})
POLICY = dataclasses.replace(SETTINGS.breaker_policy(SETTINGS.providers[0]), failure_threshold=1)


def sign(body: str, secret: str) -> str:
    sig = hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    return '{"sig":"' + sig + '",' + body[1:]


def transition(prefix: str, state: str, generation: int, at: float) -> str:
    return json.dumps({"v": 1, "type": "transition", "deployment": prefix, "provider": "p", "state": state,
                       "previous": "closed", "generation": generation, "open_until": at + 3600,
                       "probe_until": 0.0, "probe_owner": None, "reason": "forged", "at": at},
                      separators=(",", ":"))


def test_the_lua_signs_events_with_the_secret_and_stores_it_nowhere(redis_client: redis.Redis):
    prefix = f"sig-{uuid.uuid4().hex[:8]}"
    store = RedisBreakerStore(redis_client, key_prefix=prefix, channel=f"{prefix}:events", event_secret=SECRET)
    listener = redis_client.pubsub()
    listener.subscribe(f"{prefix}:events")
    wait_until(lambda: listener.get_message(timeout=0.1), 5, what="the subscription")
    store.record_failure("p", POLICY)  # threshold 1: opens
    raw = wait_until(lambda: listener.get_message(timeout=0.1), 5, what="the event")["data"].decode()
    listener.close()
    body = "{" + raw[len('{"sig":"') + 66:]
    assert raw == sign(body, SECRET)  # Python's HMAC-SHA256 of what the Lua signed
    assert json.loads(raw)["state"] == "open"
    for key in redis_client.scan_iter(match=f"{prefix}*"):
        assert SECRET.encode() not in redis_client.dump(key)


def test_unsigned_wrongly_signed_or_stale_events_are_rejected_and_real_ones_applied(redis_client: redis.Redis):
    prefix = f"sig-{uuid.uuid4().hex[:8]}"
    channel = f"{prefix}:events"
    store = RedisBreakerStore(redis_client, key_prefix=prefix, channel=channel, event_secret=SECRET)
    mirror = Mirror(["p"])
    gate = FleetGate(store, mirror, {"p": POLICY})
    sub = Subscriber(redis_client, store, mirror, ["p"], channel=channel, key_prefix=prefix, resync_interval=60.0,
                     heartbeat_interval=60.0, set_degraded=gate.set_degraded, event_secret=SECRET)
    sub.start(wait=5.0)
    try:
        now = time.time()
        forged = [
            transition(prefix, "open", 10**9, now),  # unsigned
            sign(transition(prefix, "open", 10**9, now), "not-the-secret"),  # signed with another secret
            sign(transition(prefix, "open", 10**9, now - 3600), SECRET),  # a recorded event, replayed an hour later
        ]
        for event in forged:
            redis_client.publish(channel, event)
        wait_until(lambda: sub.invalid_events == 3, 5, what="the three forged events to be rejected")
        assert mirror.get("p").snapshot.state is BreakerState.CLOSED

        other = RedisBreakerStore(redis_client, key_prefix=prefix, channel=channel, event_secret=SECRET)
        opened = other.record_failure("p", POLICY).snapshot  # another process's real transition
        wait_until(lambda: mirror.get("p").snapshot.generation == opened.generation, 5, what="the real event")
        assert mirror.get("p").snapshot.state is BreakerState.OPEN and sub.invalid_events == 3
    finally:
        sub.stop()
