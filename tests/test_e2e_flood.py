"""A flood: 10,000 chat tasks (``FLEXITASKS_FLOOD_TASKS``), two workers, both fake providers
injecting random faults (``tests/flood.py``). Every task ends in an answer or
``AllProvidersFailed``, none is lost, and the providers' own counters match the calls
the results report, call for call (a task run twice would show as calls no result owns).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from conftest import RUN_ID, SETTINGS, WORKDIR, start_worker, stop_worker, wait_for_worker
from flood import FAULTS, MESSAGES, collect, expected, flood_settings, seen_by

from flexitasks import app, chat_task

TASKS = int(os.environ.get("FLEXITASKS_FLOOD_TASKS", "10000"))
QUEUE = f"flood-{RUN_ID}"


@pytest.fixture(scope="module")
def flood_workers(redis_client, fakes) -> Iterator[list[str]]:
    config = WORKDIR / "flexitasks-flood.toml"
    config.write_text(flood_settings(SETTINGS, QUEUE).to_toml())
    procs = [start_worker("--loglevel", "WARNING", name=f"flood{i}", concurrency=32, pool="threads", config=config)
             for i in (1, 2)]
    try:
        for i in (1, 2):
            wait_for_worker(f"flood{i}@")
        yield [f"flood{i}" for i in (1, 2)]
    finally:
        for proc in procs:
            stop_worker(proc)


@pytest.mark.timeout(max(180, TASKS * 18 // 1000))  # 18 ms a task: 180 s for CI's 10,000, 30 min for 100,000
def test_a_flood_of_tasks_against_faulty_providers_loses_none_and_matches_the_providers_logs(
    flood_workers, clean
):
    for fp in clean.values():
        fp.admin.set_fault(mix=FAULTS)
    started = time.monotonic()
    ids = [chat_task.apply_async((MESSAGES,), {}, queue=QUEUE).id for _ in range(TASKS)]
    tally = collect(app, ids, timeout=max(300.0, TASKS / 20))
    elapsed = time.monotonic() - started
    stats = {name: fp.admin.stats() for name, fp in clean.items()}
    for fp in clean.values():
        fp.admin.set_fault(None)

    assert tally.other == [], tally.other[:10]  # nothing lost, nothing but answers and AllProvidersFailed
    assert tally.answered + tally.failed == TASKS == len(set(ids))
    assert tally.answered >= TASKS * 0.98, (tally.answered, tally.failed)
    for name in ("primary", "secondary"):
        assert expected(tally.calls[name]) == seen_by(stats[name]), (name, dict(tally.calls[name]), stats[name])
    # the faults really happened, on both providers
    assert all(stats[n]["by_status"].get("500", 0) and stats[n]["by_status"].get("429", 0)
               and stats[n]["by_fault"].get("truncate", 0) for n in stats), stats
    print(f"\nflood: {TASKS} tasks in {elapsed:.1f} s ({TASKS / elapsed:.0f}/s); answered {tally.answered}, "
          f"AllProvidersFailed {tally.failed}; calls {dict(tally.calls['primary'])} / "
          f"{dict(tally.calls['secondary'])}")
