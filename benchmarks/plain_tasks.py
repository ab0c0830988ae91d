"""The hand-written Celery tasks ``chat_task`` is measured against (benchmarks/overhead.py).

What a user would write without flexitasks: one Celery app, one OpenAI SDK client per
process (SDK retries off, as flexitasks has them), a call and its answer. Same broker,
same fake provider, same answer as ``chat_task``; their own queue (``plain``), so a
flexitasks worker and this one never take each other's tasks. A LiteLLM ``Router`` task
is defined when ``litellm`` is installed (``pip install -e '.[bench]'``).

Run by ``overhead.py`` as ``celery -A benchmarks.plain_tasks worker -Q plain``; it reads
``PLAIN_BROKER``, ``PLAIN_BASE_URL``, ``PLAIN_API_KEY`` and ``PLAIN_MODEL`` from the
environment, so this module imports nothing of flexitasks.
"""

from __future__ import annotations

import os
import time
from functools import cache
from typing import Any

import openai
from celery import Celery

QUEUE = "plain"
BROKER = os.environ.get("PLAIN_BROKER", "redis://127.0.0.1:6379/5")
MODEL = os.environ.get("PLAIN_MODEL", "gpt-4o-mini")

app = Celery("plain", broker=BROKER, backend=BROKER)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=QUEUE,
    task_acks_late=True,  # as flexitasks: a killed worker loses no request
    worker_prefetch_multiplier=1,
    result_expires=900,  # as the flexitasks app of the benchmarks: read at once, not kept a day
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@cache
def _client(pid: int) -> openai.OpenAI:  # one per process: keyed by pid, so a forked child builds its own
    return openai.OpenAI(
        api_key=os.environ.get("PLAIN_API_KEY", "sk-bench"), base_url=os.environ.get("PLAIN_BASE_URL"), max_retries=0
    )


def client() -> openai.OpenAI:
    return _client(os.getpid())


@app.task(name="plain.sdk", acks_late=True)
def sdk(messages: list[dict[str, Any]], max_tokens: int = 256) -> dict[str, Any]:
    r = client().chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens)  # type: ignore[arg-type]
    usage = r.usage
    return {"content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason,
            "output_tokens": usage.completion_tokens if usage else 0}


@app.task(name="plain.sdk_stream", acks_late=True)
def sdk_stream(messages: list[dict[str, Any]], max_tokens: int = 256) -> dict[str, Any]:
    parts: list[str] = []
    finish = None
    usage = None
    stream = client().chat.completions.create(
        model=MODEL, messages=messages, max_tokens=max_tokens, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
        usage = chunk.usage or usage
    return {"content": "".join(parts), "finish_reason": finish,
            "output_tokens": usage.completion_tokens if usage else 0}


@cache
def _router(pid: int) -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price list fetched at import
    from litellm import Router

    return Router(model_list=[{"model_name": "primary", "litellm_params": {
        "model": f"openai/{MODEL}", "api_base": os.environ.get("PLAIN_BASE_URL"),
        "api_key": os.environ.get("PLAIN_API_KEY", "sk-bench")}}], num_retries=0)


@app.task(name="plain.litellm", acks_late=True)
def litellm_router(messages: list[dict[str, Any]], max_tokens: int = 256) -> dict[str, Any]:
    r = _router(os.getpid()).completion(model="primary", messages=messages, max_tokens=max_tokens)
    return {"content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason,
            "input_tokens": r.usage.prompt_tokens, "output_tokens": r.usage.completion_tokens}


@app.task(name="plain.nap", acks_late=True)
def nap(seconds: float) -> dict[str, Any]:
    """No provider at all, only the wait: the ceiling of Celery's own pool (concurrency.py)."""
    time.sleep(seconds)
    return {"slept": seconds}
