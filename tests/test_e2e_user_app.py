"""Only flexitasks' own app starts breaker sync (issue 11, item 11): a user's Celery app
that imports ``chat_task`` (and so flexitasks' worker hooks) runs its own worker with no
sync thread, no process view and no breaker bootstep."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import REDIS_URL, ROOT, SETTINGS, WORKDIR, stop_worker

from flexitasks.fleet import fleet_status
from flexitasks.harness import wait_until

USER_APP = f'''
from celery import Celery

from flexitasks import chat_task  # noqa: F401  (the user's code sends chat tasks)

app = Celery("user-app", broker="{REDIS_URL}", backend="{REDIS_URL}")


@app.task(name="user_app.add")
def add(a, b):
    return a + b
'''


@pytest.mark.usefixtures("redis_client")
def test_a_users_app_importing_chat_task_starts_no_breaker_sync():
    (WORKDIR / "user_app.py").write_text(USER_APP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(WORKDIR), str(ROOT)])}
    log_path = WORKDIR / "worker-user-app.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "user_app", "worker", "--pool", "prefork", "--concurrency", "2",
             "-n", "userapp@%h", "-Q", "user-app-q", "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
            cwd=WORKDIR, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        sys.path.insert(0, str(WORKDIR))
        import user_app

        result = user_app.add.apply_async((2, 3), queue="user-app-q")
        assert result.get(timeout=60) == 5  # the user's worker runs, children and all
        time.sleep(SETTINGS.sync.heartbeat_interval * 2)  # a sync would have written its views by now
        views = [p for p in fleet_status(SETTINGS)["processes"] if str(p.get("node", "")).startswith("userapp@")]
        assert views == []
        stats = wait_until(lambda: user_app.app.control.inspect(timeout=2).stats(), 20, what="worker stats")
        node = next(n for n in stats if n.startswith("userapp@"))
        assert "flexitasks" not in stats[node]  # no flexitasks bootstep in a foreign app's worker
    finally:
        sys.path.remove(str(WORKDIR))
        stop_worker(proc)
    assert "flexitasks breaker sync" not in log_path.read_text(errors="replace")
