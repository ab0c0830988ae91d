"""The task contract through a real ``celery worker --concurrency 4`` (prefork),
real Redis, and the official SDKs talking HTTP to the fake providers."""

from __future__ import annotations

import pytest

from flexitasks import AllProvidersFailed, InvalidRequest, chat_task

pytestmark = pytest.mark.usefixtures("worker")

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Summarise this ticket"}]


def counts(fakes):
    return {name: fp.admin.stats()["requests"] for name, fp in fakes.items()}


def test_normal_answer_comes_from_the_primary(clean):
    result = chat_task.delay(MESSAGES).get(timeout=30)
    assert result["provider"] == "primary"
    assert result["model"] == "gpt-4o-mini"
    assert result["content"].startswith("primary:")
    assert "Summarise this ticket" in result["content"]
    assert result["finish_reason"] == "stop"
    usage = result["usage"]
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert [a["outcome"] for a in result["attempts"]] == ["ok"]
    assert result["latency_ms"] > 0
    assert counts(clean) == {"primary": 1, "secondary": 0}


def test_failover_when_the_primary_returns_500(clean):
    clean["primary"].admin.set_fault(status=500)
    result = chat_task.delay(MESSAGES, max_tokens=50).get(timeout=30)
    assert result["provider"] == "secondary"
    assert result["model"] == "claude-sonnet-4-5"
    assert result["content"].startswith("secondary:")
    errors = [a for a in result["attempts"] if a["outcome"] == "error"]
    assert errors and all(a["provider"] == "primary" and "500" in a["error"] for a in errors)
    assert result["attempts"][-1] == {**result["attempts"][-1], "provider": "secondary", "outcome": "ok"}
    # the system message went to Anthropic's system parameter, not into messages
    seen = clean["secondary"].admin.requests()
    assert seen and seen[-1]["path"] == "/v1/messages"


@pytest.mark.parametrize(
    ("messages", "options", "needle"),
    [
        ([], {}, "messages"),
        ([{"role": "robot", "content": "hi"}], {}, "role"),
        ([{"role": "user", "content": ""}], {}, "content"),
        ([{"role": "system", "content": "only system"}], {}, "user or assistant"),
        (MESSAGES, {"temperature": 7}, "temperature"),
        (MESSAGES, {"max_tokens": 0}, "max_tokens"),
        (MESSAGES, {"providers": ["nope"]}, "nope"),
        (MESSAGES, {"colour": "blue"}, "colour"),
        ("not a list", {}, "messages"),
    ],
)
def test_invalid_input_costs_no_provider_call(clean, messages, options, needle):
    with pytest.raises(InvalidRequest) as info:
        chat_task.delay(messages, **options).get(timeout=30)
    assert needle in str(info.value)
    assert counts(clean) == {"primary": 0, "secondary": 0}


def test_all_providers_down_fails_with_each_last_error(clean):
    clean["primary"].admin.set_fault(status=503)
    clean["secondary"].admin.set_fault(status=529)
    async_result = chat_task.delay(MESSAGES)
    with pytest.raises(AllProvidersFailed) as info:
        async_result.get(timeout=60)
    message = str(info.value)
    assert "primary" in message and "secondary" in message
    assert "503" in message and "529" in message
    # Celery's retry ran: max_task_retries = 1 means two task runs
    assert counts(clean)["secondary"] >= 2


def test_providers_option_restricts_the_route(clean):
    result = chat_task.delay(MESSAGES, providers=["secondary"]).get(timeout=30)
    assert result["provider"] == "secondary"
    assert counts(clean) == {"primary": 0, "secondary": 1}


def test_keys_never_reach_results_or_errors(clean):
    import os

    clean["primary"].admin.set_fault(status=401)
    result = chat_task.delay(MESSAGES).get(timeout=30)
    text = repr(result)
    for var in ("FLEXITASKS_TEST_PRIMARY_KEY", "FLEXITASKS_TEST_SECONDARY_KEY"):
        assert os.environ[var] not in text
    assert result["provider"] == "secondary"
    assert "misconfigured" in result["attempts"][0]["error"]


def test_worker_stays_up(clean, worker):
    assert worker.poll() is None
    assert chat_task.delay(MESSAGES).get(timeout=30)["provider"] == "primary"


def test_keys_never_reach_the_worker_log_or_task_events(clean):
    """After failures, misconfiguration and successes, the worker's log (INFO, with every
    task's arguments and results) holds no key."""
    import os

    from conftest import WORKDIR

    clean["primary"].admin.set_fault(status=401)
    chat_task.delay(MESSAGES).get(timeout=30)
    clean["primary"].admin.clear()
    chat_task.delay(MESSAGES).get(timeout=30)
    log = (WORKDIR / "worker-w1.log").read_text()
    assert "flexitasks.chat" in log  # the log is the worker's, and it logged tasks
    for var in ("FLEXITASKS_TEST_PRIMARY_KEY", "FLEXITASKS_TEST_SECONDARY_KEY"):
        assert os.environ[var] not in log


def test_a_killed_child_loses_no_request(clean):
    """acks_late + reject_on_worker_lost: the message of a child killed mid-call goes back
    to the queue and a new child answers it (a worker of its own, on a queue of its own,
    so the other tests' pool keeps its children)."""
    import os
    import signal
    import subprocess
    import time

    from conftest import start_worker, stop_worker, wait_for_worker

    proc = start_worker("-Q", "killq", name="killq", concurrency=2)
    try:
        wait_for_worker("killq@")
        clean["primary"].admin.set_fault(latency=3.0, count=1)  # the first call hangs 3 s
        result = chat_task.apply_async(args=[MESSAGES], queue="killq")
        deadline = time.monotonic() + 30
        while clean["primary"].admin.stats()["requests"] == 0:  # the call is in flight
            assert time.monotonic() < deadline, "the task never called the provider"
            time.sleep(0.05)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the worker has no children to kill"
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        answer = result.get(timeout=60)
        assert answer["provider"] == "primary"
        assert clean["primary"].admin.stats()["requests"] == 2  # the killed call, then the redelivered one
        assert proc.poll() is None
    finally:
        stop_worker(proc)
