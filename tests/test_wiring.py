"""How the pieces are wired: settings passed explicitly and read lazily, the worker's
bootstep, the one ``breaker_transition`` signal (``celery_app.py``, ``worker.py``,
``signals.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, SETTINGS

from flexitasks import FlexitasksApp
from flexitasks.breaker.schema import BreakerSnapshot
from flexitasks.breaker.store import BreakerState, StoreResult
from flexitasks.config import Settings
from flexitasks.signals import announce, breaker_transition


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_import_reads_no_file_and_loads_no_sdk(tmp_path):
    proc = python("""
        import sys
        import flexitasks
        assert not flexitasks.app.configured
        assert not {"openai", "anthropic", "flexitasks.runtime"} & set(sys.modules), sys.modules.keys()
        try:
            flexitasks.app.conf.broker_url
        except flexitasks.ConfigError as exc:
            print("config error on first use:", exc)
    """, FLEXITASKS_CONFIG=str(tmp_path / "missing.toml"))
    assert proc.returncode == 0, proc.stderr
    assert "config error on first use" in proc.stdout and "missing.toml" in proc.stdout


def test_an_app_takes_its_settings_in_code():
    settings = Settings.model_validate({
        "celery": {"broker_url": "redis://example:6379/3", "prefetch_multiplier": 2},
        "retry": {"request_timeout": 40.0},
    })
    app = FlexitasksApp(settings, set_as_current=False)
    assert not app.configured
    assert app.conf.broker_url == "redis://example:6379/3"
    assert app.conf.worker_prefetch_multiplier == 2
    assert (app.conf.task_soft_time_limit, app.conf.task_time_limit) == (55, 70)
    assert app.settings is settings
    with pytest.raises(RuntimeError, match="settings already in use"):
        app.use_settings(SETTINGS)


def test_the_package_app_uses_the_tests_settings():
    from flexitasks import app

    assert app.settings is SETTINGS
    assert app.conf.broker_url == SETTINGS.celery.broker_url


def test_a_transition_is_one_signal_named_after_its_provider():
    seen: list[tuple[str, StoreResult]] = []

    def on_secondary(sender: str, result: StoreResult, **_: object) -> None:
        seen.append((sender, result))

    breaker_transition.connect(on_secondary, sender="secondary", weak=False)
    try:
        for provider in ("primary", "secondary"):
            snapshot = BreakerSnapshot(provider=provider, state=BreakerState.CLOSED, generation=1)
            announce(StoreResult(snapshot=snapshot, transitioned=True, previous=BreakerState.OPEN))
    finally:
        breaker_transition.disconnect(on_secondary, sender="secondary")
    assert [(sender, r.snapshot.provider) for sender, r in seen] == [("secondary", "secondary")]


@pytest.mark.usefixtures("worker")
def test_the_bootstep_keeps_the_sync_on_the_worker_and_reports_it(clean):
    from flexitasks import app

    stats = app.control.inspect(timeout=5).stats() or {}
    ours = [s["flexitasks"] for name, s in stats.items() if name.startswith("w1@")]
    assert ours, f"no stats from w1: {sorted(stats)}"
    view = ours[0]["view"]
    assert ours[0]["degraded"] is False
    assert view["role"] == "worker-main" and view["node"].startswith("w1@")
    assert set(view["breakers"]) == {p.name for p in SETTINGS.providers}


def test_the_benchmarks_import():
    proc = python("import benchmarks.run")
    assert proc.returncode == 0, proc.stderr
