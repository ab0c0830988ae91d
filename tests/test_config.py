"""Config validation, request validation and a worker that refuses a bad file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flexitasks.config import load_settings
from flexitasks.errors import ConfigError, InvalidRequest
from flexitasks.models import ChatRequest

GOOD = """
[[providers]]
name = "openai"
kind = "openai"
model = "gpt-4o-mini"
priority = 2
api_key_env = "FT_UNIT_KEY"

[[providers]]
name = "claude"
kind = "anthropic"
model = "claude-sonnet-4-5"
priority = 1
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "flexitasks.toml"
    path.write_text(text)
    return path


def test_good_file_with_priorities_and_key_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("FT_UNIT_KEY", "sk-secret-value")
    settings = load_settings(write(tmp_path, GOOD))
    assert {p.name: p.priority for p in settings.providers} == {"openai": 2, "claude": 1}
    key = settings.provider("openai").api_key
    assert key is not None and key.get_secret_value() == "sk-secret-value"
    assert "sk-secret-value" not in repr(settings) and "sk-secret-value" not in str(key)
    assert settings.sync.key_prefix == "flexitasks" and settings.breaker.failure_threshold == 5


def test_env_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FLEXITASKS_BROKER_URL", "redis://example:6379/4")
    monkeypatch.setenv("FLEXITASKS_REDIS_URL", "redis://example:6379/5")
    settings = load_settings(write(tmp_path, GOOD + '\n[celery]\nbroker_url = "redis://file/1"\n'))
    assert settings.celery.broker_url == "redis://example:6379/4"
    assert settings.sync.redis_url == "redis://example:6379/5"


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda t: t.replace('kind = "anthropic"', 'kind = "gemini"'), ["providers[1]", "claude", "kind", "gemini"]),
        (lambda t: t.replace('name = "claude"', 'name = "openai"'), ["duplicate provider name 'openai'"]),
        (lambda t: t.replace('model = "gpt-4o-mini"\n', ""), ["providers[0]", "'openai'", "model", "Field required"]),
        (lambda t: t.replace("priority = 2", 'priority = "high"'), ["providers[0]", "priority", "high"]),
        (lambda t: t + '\n[breaker]\nfailure_threshold = "many"\n', ["breaker.failure_threshold"]),
        (lambda t: t + "\n[[providers]]\nname='x'\nkind='openai-compatible'\nmodel='m'\n", ["base_url is required"]),
        (lambda t: t + "\n[celery]\nbrokr_url = 'x'\n", ["celery.brokr_url", "Extra inputs"]),
        (lambda t: t + "\n[[providers\n", ["not valid TOML"]),
    ],
)
def test_bad_file_names_file_provider_and_field(tmp_path, edit, needles):
    path = write(tmp_path, edit(GOOD))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_explicit_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_worker_refuses_a_bad_file_with_one_clear_message(tmp_path):
    path = write(tmp_path, GOOD.replace('kind = "anthropic"', 'kind = "gemini"'))
    env = {**os.environ, "FLEXITASKS_CONFIG": str(path)}
    proc = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "flexitasks", "worker", "--concurrency", "1"],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "providers[1] (name='claude').kind" in proc.stderr


def test_system_messages_are_split_out_for_anthropic():
    req = ChatRequest.parse(
        [{"role": "system", "content": "a"}, {"role": "user", "content": "q"}, {"role": "system", "content": "b"}],
        {"max_tokens": 10},
    )
    assert req.system == "a\n\nb"
    assert [m.role for m in req.turns] == ["user"]


def test_invalid_request_is_one_typed_error():
    with pytest.raises(InvalidRequest, match=r"messages\.0\.role"):
        ChatRequest.parse([{"role": "bot", "content": "x"}], {})
    with pytest.raises(InvalidRequest, match="temperature"):
        ChatRequest.parse([{"role": "user", "content": "x"}], {"temperature": "hot"})
