"""What a chat task discloses outside its result: logs redacted, content hidden by default.

Owns the Celery-facing side of issue 11 items 19 and 20:

- ``ChatTask``: the base class of ``flexitasks.chat``. Unless ``celery.show_content`` is
  true it sends a summary as the message's ``argsrepr``/``kwargsrepr`` (what Flower, the
  ``task-sent``/``task-received`` events and Celery's logs show instead of the arguments)
  and returns the answer as a ``ChatAnswer``, whose ``repr`` (what Celery logs at INFO,
  puts in ``task-succeeded`` and Flower shows) hides the content. The result backend still
  stores the whole answer: it is the caller's.
- the worker's log handlers get ``redact.RedactingFilter``, and Celery's INFO line for a
  succeeded chat task never carries the answer, whatever the switch says.

``ChatTask.apply_async`` also stamps the enqueue time (``delivery.stamp``): it is the one
producer-side hook of the task. It must not decide anything about providers or breakers,
and it reads only ``celery.show_content`` from the settings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from celery import Task
from celery.signals import after_setup_logger, after_setup_task_logger

from flexitasks import delivery, redact

TASK_NAME = "flexitasks.chat"
"""The chat task's Celery name: the one place it is spelt."""
HIDDEN_FIELDS = ("content", "parsed", "tool_calls")
"""Result fields that carry the model's answer (or what it was asked)."""
SHOWN_OPTIONS = ("max_tokens", "temperature", "providers", "stream", "metadata")
"""Options that describe how a request runs, not what it says: always shown. ``metadata``
is the caller's tracing dict (at most 16 scalars, validated in ``models.py``): it is meant
to be seen in events and Flower, and is never sent to a provider."""


def _size(value: Any) -> str:
    return f"<hidden: {len(value)} chars>" if isinstance(value, str) else "<hidden>"


def args_summary(args: Any) -> str:
    messages = args[0] if isinstance(args, list | tuple) and args else None
    count = len(messages) if isinstance(messages, list) else 0
    return f"[<{count} messages, hidden>]"


def kwargs_summary(kwargs: Mapping[str, Any] | None) -> str:
    shown = {k: (v if k in SHOWN_OPTIONS else "<hidden>") for k, v in (kwargs or {}).items()}
    return repr(shown)


def result_summary(result: Mapping[str, Any]) -> str:
    return repr({k: (_size(v) if k in HIDDEN_FIELDS and v else v) for k, v in result.items()})


class ChatAnswer(Mapping[str, Any]):
    """The task's return value when content is hidden: a read-only mapping whose JSON
    (``__json__``, used by kombu's encoder, so the result backend stores the whole answer)
    is the answer and whose ``repr`` (used by Celery's logs, events and Flower) is not."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __json__(self) -> dict[str, Any]:
        return self._data

    def __repr__(self) -> str:
        return result_summary(self._data)


def show_content(app: Any) -> bool:
    """``celery.show_content`` of the app's settings (false when they cannot be read)."""
    settings = getattr(app, "settings", None)  # a FlexitasksApp's; any other app: hidden
    return bool(settings is not None and settings.celery.show_content)


class ChatTask(Task):
    """Base class of ``flexitasks.chat``: the two native hooks for what Flower shows."""

    def apply_async(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        options["headers"] = delivery.stamp(options.get("headers"))  # the enqueue time (delivery.py)
        if not show_content(self.app):
            options.setdefault("argsrepr", args_summary(args))
            options.setdefault("kwargsrepr", kwargs_summary(kwargs))
        return super().apply_async(args, kwargs, *rest, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = super().__call__(*args, **kwargs)
        request = self.request
        worker_run = not request.called_directly and not request.is_eager
        if isinstance(result, dict) and worker_run and not show_content(self.app):
            return ChatAnswer(result)
        return result


class _NoAnswerAtInfo(logging.Filter):
    """Celery logs "Task flexitasks.chat[id] succeeded in 1.2s: <result repr>" at INFO: keep
    the line, drop the answer (it is in the result backend)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping) and args.get("name") == TASK_NAME and "return_value" in args:
            record.args = {**args, "return_value": "(answer not logged)"}
        return True


def _logs_redacted(logger: logging.Logger | None = None, **_: Any) -> None:
    redact.install(logger)
    redact.install()  # the root logger too: the task logger does not propagate to it


after_setup_logger.connect(_logs_redacted, weak=False)
after_setup_task_logger.connect(_logs_redacted, weak=False)
logging.getLogger("celery.app.trace").addFilter(_NoAnswerAtInfo())
