"""Secrets never leave in text, content is hidden from what Flower shows (issue 11, items
19 and 20), and the config checks of item 21. Units: no worker needed (the end-to-end
half is tests/test_e2e_secrets.py)."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import pytest
from kombu.utils.json import dumps, loads

from flexitasks.config import load_settings
from flexitasks.disclosure import ChatAnswer, args_summary, kwargs_summary
from flexitasks.errors import AllProvidersFailed, ConfigError
from flexitasks.failures import FailureKind, ProviderFailure
from flexitasks.models import Attempt
from flexitasks.redact import RedactingFilter, redact

# Real-looking keys derived at import, so no key-like literal is committed (secret scanners flag
# those); deterministic, because they appear in parametrized test ids that every pytest-xdist
# process must collect alike.
OPENAI_KEY = "sk-proj-" + hashlib.sha256(b"flexitasks test openai key").hexdigest()[:32]
ANTHROPIC_KEY = "sk-ant-api03-" + hashlib.sha256(b"flexitasks test anthropic key").hexdigest()[:32]
TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl"
LEAKS = (OPENAI_KEY, ANTHROPIC_KEY, TOKEN, OPENAI_KEY[len("sk-proj-"):])


def assert_clean(text: str) -> None:
    for secret in LEAKS:
        assert secret not in text


@pytest.mark.parametrize(
    "text",
    [
        f"Incorrect API key provided: {OPENAI_KEY}. You can find your API key at https://platform.openai.com",
        f"invalid x-api-key {ANTHROPIC_KEY}",
        f"upstream said Authorization: Bearer {TOKEN}",
        f'{{"api_key": "{OPENAI_KEY[8:]}"}}',
        f"redis://:{OPENAI_KEY[8:]}@cache.internal:6379/0",
    ],
)
def test_key_like_strings_are_redacted(text):
    cleaned = redact(text)
    assert_clean(cleaned)
    assert "[REDACTED]" in cleaned


def test_ordinary_text_is_left_alone():
    for text in ("unavailable 500: The server had an error", "prompt is too long: 250000 tokens > 200000",
                 "max_tokens must be <= 4096", "rate limited, Retry-After 3", "sk-learn is a library"):
        assert redact(text) == text


def test_a_provider_failure_and_every_error_built_from_it_are_redacted():
    failure = ProviderFailure(FailureKind.MISCONFIGURED, f"Incorrect API key provided: {OPENAI_KEY}", status=401)
    assert_clean(str(failure))
    assert_clean(Attempt(provider="p", outcome="error", error=f"unavailable 500: {ANTHROPIC_KEY}").error or "")
    error = AllProvidersFailed(f"all providers failed: p: {OPENAI_KEY}")
    assert_clean(str(error))
    assert_clean(repr(error))
    rebuilt = type(error)(*error.args)  # how Celery's result backend rebuilds it on the caller's side
    assert str(rebuilt) == str(error)


def test_the_log_filter_redacts_messages_arguments_and_tracebacks():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test_redaction.filter")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("provider said %s", f"Bearer {TOKEN}")
        try:
            raise RuntimeError(f"SDK body: {ANTHROPIC_KEY}")
        except RuntimeError:
            logger.exception("call failed")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert "provider said Bearer [REDACTED]" in output
    assert "RuntimeError: SDK body: sk-ant-[REDACTED]" in output
    assert_clean(output)


def test_config_errors_never_echo_a_key(tmp_path: Path):
    path = tmp_path / "flexitasks.toml"
    for body in (
        f'[[providers]]\nname = "a"\nkind = "openai"\nmodel = "m"\napi_key = "{OPENAI_KEY}"\n',
        f'[[providers]]\nname = "a"\nkind = "openai"\nmodel = "m"\napi_key_env = "{OPENAI_KEY}"\n',
        f'[celery]\nbroker_url = 5\n[sync]\nredis_url = "http://:{OPENAI_KEY[8:]}@h/0"\n',
    ):
        path.write_text(body)
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        assert_clean(str(info.value))
        assert "providers[0]" in str(info.value) or "redis_url" in str(info.value)


def test_an_env_var_name_that_is_invalid_is_still_shown(tmp_path: Path):
    path = tmp_path / "flexitasks.toml"
    path.write_text('[[providers]]\nname = "a"\nkind = "openai"\nmodel = "m"\napi_key_env = "MY KEY"\n')
    with pytest.raises(ConfigError, match=r"api_key_env.*got 'MY KEY'"):
        load_settings(path)


# -- content hidden from what Flower, events and logs show (item 20) --------------------------------
def test_the_hidden_answer_is_stored_whole_but_shown_without_content():
    answer = {"provider": "p", "model": "m", "finish_reason": "stop", "attempts": [], "content": "the secret plan"}
    wrapped = ChatAnswer(answer)
    assert loads(dumps({"result": wrapped}))["result"] == answer  # what the result backend stores
    assert "the secret plan" not in repr(wrapped) and "<hidden: 15 chars>" in repr(wrapped)
    assert "'provider': 'p'" in repr(wrapped)
    assert dict(wrapped) == answer and wrapped["content"] == "the secret plan"


def test_arguments_are_summarised_without_their_text():
    messages = [{"role": "user", "content": "my medical history"}]
    assert "medical" not in args_summary((messages,)) and "1 messages" in args_summary((messages,))
    shown = kwargs_summary({"max_tokens": 5, "tools": [{"function": {"name": "lookup_patient"}}],
                            "metadata": {"trace": "t-42"}})
    assert "'max_tokens': 5" in shown
    assert "lookup_patient" not in shown
    assert "t-42" in shown  # tracing metadata is carried in events (issue 9), never sent to a provider


# -- config checks (item 21) ---------------------------------------------------------------------------
PROVIDER = '[[providers]]\nname = "a"\nkind = "openai"\nmodel = "m"\n'


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[sync]\nchannel = ""\n', "sync.channel"),
        ('[sync]\nredis_url = "http://127.0.0.1:6379/0"\n', "scheme 'http'"),
        ('[sync]\nredis_url = "127.0.0.1:6379"\n', "sync.redis_url"),
        (PROVIDER + "timeout = 10\nfirst_token_timeout = 20\n", "first_token_timeout (20) is longer than timeout"),
    ],
)
def test_config_checks_reject(tmp_path: Path, body: str, needle: str):
    path = tmp_path / "flexitasks.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert needle in str(info.value)


def test_a_request_timeout_shorter_than_a_providers_timeout_is_warned(tmp_path: Path):
    path = tmp_path / "flexitasks.toml"
    path.write_text("[retry]\nrequest_timeout = 30\n" + PROVIDER + "timeout = 60\n")
    settings = load_settings(path)  # loads (and logs the warning): it works, but cuts long answers
    assert settings.warnings() == [
        "retry.request_timeout (30s) is shorter than provider a's timeout (60s): "
        "its long answers will be cut by the request's deadline"
    ]
    path.write_text('[sync]\nredis_url = "unix:///run/redis.sock"\n')
    assert load_settings(path).sync.redis_url == "unix:///run/redis.sock"
