"""Benchmarks of flexitasks' fleet-wide circuit breakers against pybreaker (issue 3).

Run ``python -m benchmarks.run [--quick] [--only NAME]``. Importing this package writes
the benchmark's flexitasks config (``benchmarks.common`` loads it into ``settings``). The
config has two OpenAI-kind fake providers on free ports
(``primary``, ``secondary``), the product's default ``[breaker]`` thresholds, a Redis DB
(``FLEXITASKS_BENCH_REDIS``, default DB 5) and a key prefix of this run's own. A child
process inherits the same file through ``FLEXITASKS_BENCH_CONFIG``, so it never
re-generates ports or prefixes.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
import uuid
from pathlib import Path

from flexitasks.harness import free_port

API_KEY_ENV = "FLEXITASKS_BENCH_KEY"
PRIMARY, SECONDARY = "primary", "secondary"


def _write_config() -> Path:
    run_id = uuid.uuid4().hex[:8]
    prefix = f"ftbench-{run_id}"
    redis_url = os.environ.get("FLEXITASKS_BENCH_REDIS", "redis://127.0.0.1:6379/5")
    path = Path(tempfile.mkdtemp(prefix="flexitasks-bench-")) / "flexitasks.toml"
    providers = "".join(
        f"""
[[providers]]
name = "{name}"
kind = "openai"
model = "gpt-4o-mini"
priority = {priority}
api_key_env = "{API_KEY_ENV}"
base_url = "http://127.0.0.1:{free_port()}/v1"
timeout = 10.0
connect_timeout = 1.0
first_token_timeout = 5.0
stall_timeout = 5.0
"""
        for priority, name in enumerate((PRIMARY, SECONDARY), start=1)
    )
    # [breaker] and [sync] intervals are the product defaults. Retries on the same
    # provider are off so every loop iteration is exactly one call, as for pybreaker, and
    # request_timeout < recovery_timeout so a router never waits out an OPEN breaker.
    path.write_text(f"""
[celery]
broker_url = "{redis_url}"
result_backend = "{redis_url}"
result_expires = 900.0  # a benchmark's results are read at once; thousands per run must not pile up

[sync]
redis_url = "{redis_url}"
channel = "{prefix}:events"
key_prefix = "{prefix}"

[breaker]
failure_threshold = 5
failure_rate_threshold = 0.5
window = 60.0
recovery_timeout = 10.0
max_recovery_timeout = 60.0

[retry]
same_provider_retries = 0
request_timeout = 5.0
{providers}""")
    return path


def _config_path() -> Path:
    inherited = os.environ.get("FLEXITASKS_BENCH_CONFIG")
    if inherited and Path(inherited).exists():
        return Path(inherited)
    path = _write_config()
    os.environ["FLEXITASKS_BENCH_CONFIG"] = str(path)
    os.environ.pop("FLEXITASKS_REDIS_URL", None)  # only a child of ours may redirect Redis (cost.py)
    return path


CONFIG_PATH = _config_path()
LOG_FILE = CONFIG_PATH.parent / "benchmarks.log"  # log records of every process of the run
os.environ.setdefault(API_KEY_ENV, "sk-bench-" + uuid.uuid4().hex[:8])
for _var in ("FLEXITASKS_BROKER_URL", "FLEXITASKS_RESULT_BACKEND"):
    os.environ.pop(_var, None)

_raw = tomllib.loads(CONFIG_PATH.read_text())
REDIS_URL: str = _raw["sync"]["redis_url"]
KEY_PREFIX: str = _raw["sync"]["key_prefix"]
CHANNEL: str = _raw["sync"]["channel"]
BASE_URLS: dict[str, str] = {p["name"]: p["base_url"] for p in _raw["providers"]}
