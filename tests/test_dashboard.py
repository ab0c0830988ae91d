"""The live dashboard and Flower's task page, seen through a real headless Chromium.

Debian's ``chromium`` (installed here when missing: ``apt-get install -y chromium``) is
driven by Playwright over CDP. A trip of the primary through real failures and its
recovery through a probe are watched on ``flexitasks dashboard``; Flower's page of a
failed-over task must show who answered before the answer's text. Screenshots go to the
run's work dir, or to ``FLEXITASKS_SCREENSHOT_DIR`` (``docs/`` for the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, WORKDIR, free_port

from flexitasks.harness import stop_process

pytestmark = pytest.mark.usefixtures("worker")

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(os.environ.get("FLEXITASKS_SCREENSHOT_DIR") or WORKDIR)


def chromium_path() -> str:
    """Debian's chromium, installed if missing; a skip (never under CI=true) where it cannot be."""
    found = shutil.which("chromium")
    if found:
        return found
    why = "chromium is not installed"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                why += f"; `{' '.join(cmd)}` failed: {proc.stderr.strip()[-300:]}"
                break
        found = shutil.which("chromium")
        if found:
            return found
    else:
        why += " and this user cannot apt-get install it"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why + " (CI=true)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = chromium_path()
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="flexitasks-chromium-")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1280, "height": 820},
        )
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def running(cmd: list[str], url: str, log_name: str, env: dict[str, str] | None = None) -> Iterator[str]:
    log = open(WORKDIR / log_name, "ab")  # noqa: SIM115  (owned by the process)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env or os.environ.copy(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_http(url)
        yield url
    finally:
        stop_process(proc, timeout=10)
        log.close()


@pytest.fixture(scope="module")
def dashboard() -> Iterator[str]:
    port = free_port()
    with running([sys.executable, "-m", "flexitasks.cli", "dashboard", "--port", str(port)],
                 f"http://127.0.0.1:{port}/state", "dashboard.log") as url:
        yield url.removesuffix("state")


@pytest.fixture(scope="module")
def flower() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
    cmd = [sys.executable, "-m", "celery", "-A", "flexitasks", "flower", f"--port={port}", "--address=127.0.0.1"]
    with running(cmd, f"http://127.0.0.1:{port}/healthcheck", "flower.log", env) as url:
        yield url.removesuffix("healthcheck")


def wait_until_flower_watches(flower: str) -> None:
    """Flower turns task events on in the workers it sees (``enable_events``, every few seconds;
    they are off by default, as in Celery): wait until a task shows up in its API."""
    from flexitasks import chat_task

    deadline = time.monotonic() + 60
    while True:
        task_id = chat_task.delay([{"role": "user", "content": "is Flower watching?"}]).id
        chat_task.AsyncResult(task_id).get(timeout=30)
        time.sleep(0.5)
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{flower}api/task/info/{task_id}", timeout=5).status == 200:
                return
        assert time.monotonic() < deadline, "Flower never saw a task: it did not turn task events on"


def row_state(page: object, provider: str) -> str:
    return page.get_attribute(f"#providers tr[data-provider='{provider}']", "data-state")  # type: ignore[attr-defined]


def test_dashboard_follows_a_trip_and_a_recovery_and_flower_shows_who_answered(
    clean, browser, dashboard, flower, redis_client
):
    from flexitasks import chat_task

    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(dashboard)
    page.wait_for_selector("#providers tr[data-provider='primary'][data-state='closed']", timeout=15_000)
    for _ in range(3):
        assert chat_task.delay([{"role": "user", "content": "hello"}]).get(timeout=30)["provider"] == "primary"
    wait_until_flower_watches(flower)

    # An outage: the primary answers 500 until the fleet's breaker opens; a long prompt makes
    # the answer's text long, so Flower's cut repr would hide anything after it.
    clean["primary"].admin.set_fault(status=500)
    long_prompt = "Summarise this ticket: " + "the checkout page times out under load. " * 40
    failed_over = [chat_task.delay([{"role": "user", "content": long_prompt}]) for _ in range(6)]
    results = [r.get(timeout=60) for r in failed_over]
    assert {r["provider"] for r in results} == {"secondary"}
    page.wait_for_selector("#providers tr[data-provider='primary'][data-state='open']", timeout=15_000)
    page.wait_for_selector("#failovers tr[data-move='primary->secondary']", timeout=15_000)
    assert page.text_content("#providers tr[data-provider='primary'] .probe").startswith(("in ", "now"))
    # every live process's applied view is shown, the worker's main process and its 4 children
    page.wait_for_function(
        "document.querySelectorAll(\"#processes td.view[data-provider='primary'][data-state='open']\").length >= 5",
        timeout=15_000,
    )
    # per-call counts reach Redis within about a second (batched per process)
    page.wait_for_function(
        "Number(document.querySelector(\"#providers tr[data-provider='primary'] .calls-error\").textContent) >= 5",
        timeout=15_000,
    )
    page.screenshot(path=str(SHOTS / "dashboard-outage.png"), full_page=True)

    # Flower: the failed-over task's page shows provider and attempts before the cut content
    task_id = next(r.id for r, res in zip(failed_over, results, strict=True)
                   if any(a["outcome"] == "error" for a in res["attempts"]))
    flower_page = browser.new_page()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 30
    while True:
        flower_page.goto(f"{flower}task/{task_id}")
        text = flower_page.text_content("body") or ""
        if "SUCCESS" in text and "'provider': 'secondary'" in text:
            break
        assert time.monotonic() < deadline, f"Flower never showed task {task_id}: {text[:500]}"
        time.sleep(0.5)
    result_text = text[text.index("'provider': 'secondary'"):]
    assert "'attempts'" in result_text and "unavailable 500" in result_text
    if "'content'" in result_text:  # the answer's text comes last, or is cut off entirely
        assert result_text.index("'latency_ms'") < result_text.index("'content'")
    flower_page.screenshot(path=str(SHOTS / "flower-failover-task.png"), full_page=True)

    # Recovery: the provider heals, the next call after the open interval probes and closes it
    clean["primary"].admin.clear()
    deadline = time.monotonic() + 30
    while row_state(page, "primary") != "closed":
        chat_task.delay([{"role": "user", "content": "are you back?"}]).get(timeout=30)
        assert time.monotonic() < deadline, "the primary's breaker never closed on the dashboard"
        time.sleep(0.5)
    page.wait_for_function(
        "document.querySelectorAll(\"#processes td.view[data-provider='primary'][data-state='closed']\").length >= 5",
        timeout=15_000,
    )
    state = json.loads(urllib.request.urlopen(f"{dashboard}state", timeout=5).read())
    assert state["providers"]["primary"]["state"] == "closed"
    assert state["providers"]["primary"]["reason"] == "probe_succeeded"
    page.screenshot(path=str(WORKDIR / "dashboard-recovered.png"), full_page=True)
    page.close()
    flower_page.close()


def test_dashboard_says_redis_is_down_and_keeps_serving(browser):
    port = free_port()
    env = {**os.environ, "FLEXITASKS_REDIS_URL": "redis://127.0.0.1:1/0"}
    cmd = [sys.executable, "-m", "flexitasks.cli", "dashboard", "--port", str(port)]
    with running(cmd, f"http://127.0.0.1:{port}/state", "dashboard-down.log", env) as url:
        page = browser.new_page()  # type: ignore[attr-defined]
        page.goto(url.removesuffix("state"))
        page.wait_for_selector("body[data-redis='down'] #banner", timeout=15_000)
        assert "Redis unreachable" in page.text_content("#banner")
        page.close()


def test_the_dashboard_state_carries_limit_use_when_limits_exist(redis_client):
    """A provider with an rpm limit: its use (requests in the bucket against the burst) is in the state."""
    from conftest import SETTINGS

    from flexitasks.dashboard.server import Hub
    from flexitasks.fleet import reader_for
    from flexitasks.limits.policy import policy_of
    from flexitasks.limits.redis_backend import RedisLimiterBackend

    data = SETTINGS.model_dump()
    data["providers"][0].update(rpm=60.0, burst=5.0)
    limited = type(SETTINGS).model_validate(data)
    primary = limited.provider("primary")
    backend = RedisLimiterBackend(redis_client, limited.sync.key_prefix)
    for i in range(3):
        backend.check("primary", policy_of(primary), 0, f"lease-{i}")
    hub = Hub(reader_for(limited), limited.sync.channel, {"source": "test"})
    hub.publish("test")
    state = json.loads(hub.latest)
    used, capacity = state["limits"]["primary"]["rpm"]["used"], state["limits"]["primary"]["rpm"]["capacity"]
    assert capacity == 5.0 and 2.0 <= used <= 3.0
    assert "secondary" not in state["limits"]
