"""Configuration: the ``Settings`` model, the TOML file, environment overrides, validation.

Owns reading ``FLEXITASKS_CONFIG`` (else ``./flexitasks.toml``) and turning every
problem into one ``ConfigError`` that names the file, the provider and the field.
API keys are read from the environment variable each provider names and held as
``SecretStr``; the file never holds a key. Touches no network, holds no global
settings: ``load_settings()`` reads the file when called, ``Settings(...)`` builds them
in code, and whoever composes the objects passes them on (see ``celery_app.py``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flexitasks.breaker.store import BreakerPolicy
from flexitasks.errors import ConfigError
from flexitasks.redact import looks_secret, redact

log = logging.getLogger(__name__)

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
ENV_OVERRIDES = {
    "FLEXITASKS_BROKER_URL": ("celery", "broker_url"),
    "FLEXITASKS_RESULT_BACKEND": ("celery", "result_backend"),
    "FLEXITASKS_REDIS_URL": ("sync", "redis_url"),
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CelerySettings(_Section):
    broker_url: str = DEFAULT_REDIS
    result_backend: str = DEFAULT_REDIS
    result_expires: float = Field(default=3600.0, gt=0)
    prefetch_multiplier: int = Field(default=1, ge=1)
    max_task_retries: int = Field(default=3, ge=0)
    retry_backoff: int = Field(default=2, ge=1)  # Celery's factor: whole seconds
    retry_backoff_max: int = Field(default=60, ge=1)
    queue: str = Field(default="flexitasks", min_length=1)
    """The queue chat tasks are sent to and the only one workers consume: another Celery app
    sharing the broker keeps its own tasks (neither eaten nor dropped as unregistered)."""
    options: dict[str, Any] = Field(default_factory=dict)
    """``[celery.options]``: further Celery settings, passed through (checked against Celery's
    own list). A table (``broker_transport_options``) is merged into flexitasks' own."""
    max_redeliveries: int = Field(default=3, ge=0)
    """Deliveries of one message beyond the first (a worker killed mid-task) before it fails with
    ``RedeliveredTooOften``: a message that kills every worker it reaches must not loop for ever."""
    result_repr_maxsize: int = Field(default=1024, ge=64)
    """Characters of a result's repr that Celery logs and sends to monitors (Flower)."""
    master_name: str | None = None
    """The Sentinel master of a ``sentinel://`` broker or result backend (Celery's
    ``master_name`` transport option); required with such a URL."""
    task_events: bool = False
    """Celery's task events (``task-sent``, ``task-received``, ``task-succeeded`` ...) on from the
    start. Off, as in Celery: they cost about a sixth of a call's worker CPU, and Flower turns
    them on in the workers it watches (``enable_events``), as does ``celery -A flexitasks worker
    -E`` or ``celery control enable_events``. Breaker events are sent either way."""
    show_content: bool = False
    """Show prompts and answers in Flower, task events and Celery's logs (off: a summary:
    message count, options, result fields with the content hidden). Results keep them."""

    @field_validator("options")
    @classmethod
    def _celery_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        return _check_celery_options(options)


REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


PROTECTED_CELERY_OPTIONS = {
    "broker_url": "celery.broker_url", "result_backend": "celery.result_backend",
    "task_serializer": "JSON only", "result_serializer": "JSON only", "accept_content": "JSON only",
    "result_accept_content": "JSON only", "event_serializer": "JSON only",
    "task_acks_late": "a killed worker must lose no request",
    "task_reject_on_worker_lost": "a killed worker must lose no request",
    "task_default_queue": "celery.queue", "worker_prefetch_multiplier": "celery.prefetch_multiplier",
    "result_expires": "celery.result_expires",
}
"""Celery settings flexitasks sets itself: not accepted in ``[celery.options]`` (why, or where to set it)."""


def _check_celery_options(options: dict[str, Any]) -> dict[str, Any]:
    from celery.app.defaults import DEFAULTS  # Celery's own list of its settings

    unknown = sorted(k for k in options if k not in DEFAULTS or not k.islower())
    if unknown:
        raise ValueError(f"not Celery settings: {', '.join(unknown)} (Celery's lowercase names only)")
    protected = [f"{k} ({PROTECTED_CELERY_OPTIONS[k]})" for k in sorted(options) if k in PROTECTED_CELERY_OPTIONS]
    if protected:
        raise ValueError(f"set by flexitasks, not here: {'; '.join(protected)}")
    return options


class SyncSettings(_Section):
    redis_url: str = DEFAULT_REDIS
    channel: str = Field(default="", validate_default=False)
    """Pub/sub channel of breaker events; default ``{key_prefix}:events``, so deployments that
    share a Redis (each with its own key_prefix) never hear each other."""
    key_prefix: str = Field(default="flexitasks", min_length=1)
    resync_interval: float = Field(default=5.0, gt=0)
    heartbeat_interval: float = Field(default=2.0, gt=0)
    socket_timeout: float = Field(default=2.0, gt=0)
    master_name: str | None = None
    """The Sentinel master to use when ``redis_url`` is ``sentinel://`` (required then)."""
    cluster: bool = False
    """``redis_url`` is one node of a Redis Cluster (keys are hash-tagged per provider)."""

    @field_validator("key_prefix")
    @classmethod
    def _no_hash_tag(cls, prefix: str) -> str:
        if any(c in prefix for c in "{}"):
            raise ValueError("must not contain '{' or '}' (flexitasks adds its own Redis Cluster hash tags)")
        return prefix

    @model_validator(mode="after")
    def _topology(self) -> SyncSettings:
        if self.redis_url.startswith("sentinel://") and not self.master_name:
            raise ValueError("redis_url is sentinel://: master_name is required")
        if self.cluster and self.redis_url.startswith(("sentinel://", "unix://")):
            raise ValueError("cluster = true needs a redis:// or rediss:// node URL")
        return self

    @property
    def event_secret(self) -> SecretStr | None:
        """``FLEXITASKS_EVENT_SECRET``: signs breaker events (HMAC-SHA256); from the environment
        only, read when used. Unset: events are unsigned and accepted unsigned."""
        value = os.environ.get("FLEXITASKS_EVENT_SECRET")
        return SecretStr(value) if value else None

    @model_validator(mode="before")
    @classmethod
    def _channel_from_prefix(cls, data: Any) -> Any:
        if isinstance(data, dict) and "channel" not in data:
            return {**data, "channel": f"{data.get('key_prefix') or 'flexitasks'}:events"}
        return data

    @field_validator("channel")
    @classmethod
    def _channel_named(cls, channel: str) -> str:
        if not channel:
            raise ValueError("must not be empty (default: '<key_prefix>:events')")
        return channel

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if not url.startswith(REDIS_SCHEMES):
            scheme = url.split("://", 1)[0] if "://" in url else "(none)"
            raise ValueError(f"scheme {scheme!r} is not one of {', '.join(REDIS_SCHEMES)}")
        return url


class BreakerSettings(_Section):
    failure_threshold: int = Field(default=5, ge=1)
    failure_rate_threshold: float = Field(default=0.5, gt=0, le=1)
    window: float = Field(default=60.0, gt=0)
    recovery_timeout: float = Field(default=10.0, gt=0)
    max_recovery_timeout: float = Field(default=60.0, gt=0)
    success_threshold: int = Field(default=1, ge=1)
    jitter: float = Field(default=0.1, ge=0, lt=1)
    enabled: bool = True


class RetrySettings(_Section):
    """How one request treats a misbehaving provider (README, "Failure conduct").

    The defaults keep a background task patient with the preferred provider for a few
    seconds, and never let one request send more than a few calls a second to a provider.
    """

    same_provider_retries: int = Field(default=1, ge=0)
    """Retries on the same provider after a 5xx/connection error or a cut/malformed stream.
    One: a single blip is common and the retry is cheap; two failures in a row mean go elsewhere."""
    same_provider_backoff: float = Field(default=0.25, ge=0)
    """Seconds before the first such retry (doubling per retry, with jitter between half and all of it)."""
    rate_limit_attempts: int = Field(default=3, ge=1)
    """Calls to a provider answering 429 without Retry-After, per request, before failing over."""
    rate_limit_backoff: float = Field(default=0.5, ge=0)
    """First 429 backoff (doubling, jittered): the default 3 attempts are spread over at least 0.75 s."""
    retry_after_wait_max: float = Field(default=5.0, ge=0)
    """A Retry-After up to this long is waited out on the same provider; a longer one fails over at once."""
    retry_after_max: float | None = Field(default=None, gt=0)
    """Longest Retry-After honoured; a longer one counts as this long (default: the breaker's
    ``max_recovery_timeout``): one response saying 86400 must not open a provider fleet-wide for a day."""
    request_timeout: float = Field(default=120.0, gt=0)
    """Total seconds one run of the task may spend on calls, retries and waits; nothing starts after it."""
    content_policy_failover: bool = False
    """Try the next provider after a content-policy refusal (off: fail with ContentRejected at once)."""


ProviderKind = Literal["openai", "anthropic", "openai-compatible"]
Capability = Literal["tools", "vision", "json_schema"]


class RequestSettings(_Section):
    """Limits on what a producer may send (checked before any provider call)."""

    max_request_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    """Largest request (messages and options as JSON); images in data URLs count."""


class PriceSettings(_Section):
    """US dollars per million tokens, for ``cost_usd`` and ``flexitasks_cost_usd_total``."""

    input_per_million: float = Field(default=0.0, ge=0)
    output_per_million: float = Field(default=0.0, ge=0)


class ProviderSettings(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: ProviderKind
    model: str = Field(min_length=1)
    priority: int = 100
    api_key_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    """The NAME of the environment variable holding the key (never the key itself)."""
    base_url: str | None = None
    timeout: float = Field(default=60.0, gt=0)
    """Longest one call may take, the whole answer streamed (1024 tokens at 20 tokens/s fit)."""
    connect_timeout: float = Field(default=5.0, gt=0)
    """TCP (and TLS) connect; a provider that cannot even accept is failed over quickly."""
    first_token_timeout: float = Field(default=30.0, gt=0)
    """From the start of the call (connect and headers included) to the first generated token.
    A silent provider is failed over after this and not retried on the same route."""
    stall_timeout: float = Field(default=15.0, gt=0)
    """Longest gap between stream events once tokens flow; past it the call fails over."""
    max_tokens: int = Field(default=1024, ge=1)
    ca_bundle: str | None = None
    """CA certificates (a PEM file, or a hashed directory) that verify the provider's TLS
    certificate, e.g. a gateway's private CA; unset: the system store (``SSL_CERT_FILE`` /
    ``SSL_CERT_DIR`` honoured)."""
    capabilities: list[Capability] | None = None
    """What the model takes: tools, vision, json_schema. Default by kind (``capabilities.py``):
    all three for openai and anthropic, tools and json_schema for openai-compatible."""
    stream_options: bool = True
    """OpenAI kinds: send ``stream_options: {include_usage: true}`` so a streamed answer reports
    its token usage. Turn off for compatible servers that refuse the parameter (usage is then 0)."""
    rpm: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Requests per minute across the whole fleet, spread smoothly (GCRA); unset: no limit."""
    burst: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Requests that may start at once under ``rpm``; default one second's worth (at least 1)."""
    tpm: int | None = Field(default=None, gt=0)
    """Tokens per minute across the fleet: reserved before a call, settled with real usage after."""
    max_in_flight: int | None = Field(default=None, gt=0)
    """Calls in progress at once across the fleet (leases that expire if their holder dies)."""
    weight: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    """Share of the traffic among providers of the same priority."""

    @field_validator("burst")
    @classmethod
    def _burst_within_a_minute(cls, burst: float | None, info: ValidationInfo) -> float | None:
        rpm = info.data.get("rpm")
        if burst is None:
            return None
        if rpm is None:
            raise ValueError("burst needs rpm")
        if burst < 1:
            raise ValueError("burst must be at least 1 request")
        if burst > rpm:
            raise ValueError(f"burst {burst:g} is more than a minute's worth of rpm ({rpm:g})")
        return burst
    price: PriceSettings | None = None
    """Optional price table; without it the result's ``cost_usd`` is null for this provider."""

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle_exists(cls, path: str | None) -> str | None:
        if path is not None and not os.path.exists(path):
            raise ValueError(f"no such file or directory: {path}")
        return path

    @model_validator(mode="after")
    def _compatible_needs_url(self) -> ProviderSettings:
        if self.kind == "openai-compatible" and not self.base_url:
            raise ValueError("base_url is required for kind 'openai-compatible'")
        if self.first_token_timeout > self.timeout:
            raise ValueError(
                f"first_token_timeout ({self.first_token_timeout:g}) is longer than timeout ({self.timeout:g}): "
                "the whole call would be cut before its first token could be waited for"
            )
        return self

    @property
    def api_key(self) -> SecretStr | None:
        """The key, read from the environment at the moment of use, never stored in the file."""
        value = os.environ.get(self.api_key_env) if self.api_key_env else None
        return SecretStr(value) if value else None


class Settings(_Section):
    source: str = "<defaults>"
    celery: CelerySettings = CelerySettings()
    sync: SyncSettings = SyncSettings()
    breaker: BreakerSettings = BreakerSettings()
    retry: RetrySettings = RetrySettings()
    requests: RequestSettings = RequestSettings()
    providers: list[ProviderSettings] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for p in self.providers:
            if p.name in seen:
                raise ValueError(f"duplicate provider name {p.name!r}")
            seen.add(p.name)
        if self.retry.retry_after_max is None:
            cap = max(self.breaker.max_recovery_timeout, self.breaker.recovery_timeout)
            self.retry = self.retry.model_copy(update={"retry_after_max": cap})
        for warning in self.warnings():
            log.warning("%s: %s", self.source, warning)
        return self

    def warnings(self) -> list[str]:
        """Settings that work but probably do not do what was meant (logged when loaded)."""
        return [
            f"retry.request_timeout ({self.retry.request_timeout:g}s) is shorter than provider {p.name}'s "
            f"timeout ({p.timeout:g}s): its long answers will be cut by the request's deadline"
            for p in self.providers
            if self.retry.request_timeout < p.timeout
        ]

    def provider(self, name: str) -> ProviderSettings:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)

    def breaker_policy(self, provider: ProviderSettings) -> BreakerPolicy:
        b = self.breaker
        return BreakerPolicy(
            failure_threshold=b.failure_threshold,
            failure_rate_threshold=b.failure_rate_threshold,
            window=b.window,
            recovery_timeout=b.recovery_timeout,
            max_recovery_timeout=max(b.max_recovery_timeout, b.recovery_timeout),
            success_threshold=b.success_threshold,
            jitter=b.jitter,
            probe_ttl=max(provider.timeout, provider.first_token_timeout, provider.stall_timeout) + 5.0,
        )

    def to_toml(self) -> str:
        """The same settings as a config file, for processes started from settings built in
        code (the tests' and the demo's workers). Environment overrides are not applied twice:
        the values written are the final ones."""
        data = self.model_dump(exclude={"source"}, exclude_none=True, mode="json")
        providers = data.pop("providers")
        tables = [(f"[{name}]", values) for name, values in data.items()]
        tables += [("[[providers]]", values) for values in providers]
        return "\n".join(
            header + "\n" + "".join(f"{_toml_key(k)} = {_toml_value(v)}\n" for k, v in values.items())
            for header, values in tables
        )


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    """JSON scalars are TOML scalars; tables and arrays are written inline."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)


def config_path() -> Path:
    return Path(os.environ.get("FLEXITASKS_CONFIG") or "flexitasks.toml")


def no_config_warning() -> str | None:
    """The loud warning owed when neither FLEXITASKS_CONFIG nor ./flexitasks.toml exists
    (the CLI prints it, a worker logs it)."""
    if os.environ.get("FLEXITASKS_CONFIG") or config_path().exists():
        return None
    return ("WARNING: no configuration: FLEXITASKS_CONFIG is not set and ./flexitasks.toml does not exist; "
            "running on built-in defaults with NO providers (Redis redis://127.0.0.1:6379/0)")


def _describe(raw: dict[str, Any], loc: tuple[Any, ...]) -> str:
    """'providers[1] (name='claude').kind' rather than pydantic's 'providers.1.kind'."""
    parts: list[str] = []
    i = 0
    while i < len(loc):
        part = loc[i]
        if part == "providers" and i + 1 < len(loc) and isinstance(loc[i + 1], int):
            idx = loc[i + 1]
            entries = raw.get("providers") or []
            name = entries[idx].get("name") if idx < len(entries) and isinstance(entries[idx], dict) else None
            parts.append(f"providers[{idx}]" + (f" (name={name!r})" if name else ""))
            i += 2
            continue
        parts.append(str(part))
        i += 1
    return ".".join(parts) or "(top level)"


_SECRET_FIELD = ("key", "secret", "token", "password", "passwd")


def _echo(loc: tuple[Any, ...], err: Any) -> str:
    """The offending value, for the error message, unless it may be a secret: a field
    named like one (``api_key``, ``token`` ...) or a value shaped like a key is not shown."""
    if err["type"] == "missing" or isinstance(err["input"], dict):
        return ""
    text = repr(err["input"])
    named_secret = any(word in str(part).lower() for part in loc for word in _SECRET_FIELD)
    if named_secret and not (loc and loc[-1] == "api_key_env" and not looks_secret(text)):
        return " (value not shown: the field may hold a secret)"
    if looks_secret(text):
        return f" (got {redact(text)}: it looks like a secret; never put keys in the file)"
    return f" (got {text})"


def parse_settings(raw: dict[str, Any], source: str) -> Settings:
    """Validate a parsed TOML document plus environment overrides."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for env, (section, key) in ENV_OVERRIDES.items():
        if os.environ.get(env):
            sect = data.setdefault(section, {})
            if isinstance(sect, dict):
                sect[key] = os.environ[env]
    data["source"] = source
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            lines.append(f"{source}: {_describe(raw, loc)}: {err['msg']}{_echo(loc, err)}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_settings(path: str | Path | None = None) -> Settings:
    """Read and validate the config file; a missing default file means built-in defaults."""
    explicit = path is not None or bool(os.environ.get("FLEXITASKS_CONFIG"))
    target = Path(path) if path is not None else config_path()
    if not target.exists():
        if explicit:
            raise ConfigError(f"{target}: configuration file not found")
        return parse_settings({}, "<defaults>")
    try:
        raw = tomllib.loads(target.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{target}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{target}: not valid TOML: {exc}") from None
    return parse_settings(raw, str(target))
