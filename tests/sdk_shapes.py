"""Checks a dict against an SDK's request ``TypedDict``, strictly: unknown keys, missing
required keys and wrong value types are all reported (pydantic's TypeAdapter lets unknown
keys through). Test helper only: the shapes are the SDKs' own, not copies of them."""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from typing_extensions import is_typeddict


def problems(value: Any, tp: Any, path: str = "$") -> list[str]:
    """Everything wrong with ``value`` as an instance of ``tp``; empty when it fits."""
    origin, args = get_origin(tp), get_args(tp)
    if tp in (Any, object) or isinstance(tp, typing.TypeVar):
        return []
    if origin is typing.Annotated or _wrapper(origin):
        return problems(value, args[0], path)
    if hasattr(tp, "__value__"):  # a `type X = ...` alias
        return problems(value, tp.__value__, path)
    if origin in (Union, types.UnionType):
        found = [problems(value, a, path) for a in args]
        return [] if any(not f for f in found) else min(found, key=len)
    if origin is Literal:
        return [] if value in args else [f"{path}: {value!r} is not one of {args}"]
    if is_typeddict(tp):
        return _typeddict(value, tp, path)
    if tp is type(None):
        return [] if value is None else [f"{path}: expected null"]
    if origin in (dict, collections.abc.Mapping) or tp is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in problems(v, args[1] if args else Any, f"{path}.{k}")]
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence) or _is_sequence_not_str(tp):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        inner = args[0] if args else Any
        return [p for i, v in enumerate(value) for p in problems(v, inner, f"{path}[{i}]")]
    if tp is float:
        return [] if isinstance(value, int | float) and not isinstance(value, bool) else [f"{path}: expected a number"]
    if isinstance(tp, type):
        return [] if isinstance(value, tp) else [f"{path}: expected {tp.__name__}, got {type(value).__name__}"]
    return []  # a type this helper does not know: accept rather than guess


def _wrapper(origin: Any) -> bool:
    """Required[...], NotRequired[...], ReadOnly[...] (typing's or typing_extensions')."""
    return getattr(origin, "_name", None) in ("Required", "NotRequired", "ReadOnly")


def _totals(tp: Any) -> dict[str, bool]:
    """Each key's ``total`` flag, from the TypedDict (base) that declares it."""
    out: dict[str, bool] = {}
    for base in getattr(tp, "__orig_bases__", ()):
        if is_typeddict(base):
            out.update(_totals(base))
    own = [k for k in inspect.get_annotations(tp) if k not in out]  # 3.11 merges the bases' in
    out.update({k: tp.__total__ for k in own})
    return out


def _required(total: bool, hint: Any) -> bool:
    """From the hint itself: with postponed annotations, ``__required_keys__`` misses ``Required[...]``."""
    while get_origin(hint) is typing.Annotated:
        hint = get_args(hint)[0]
    name = getattr(get_origin(hint), "_name", None)
    return name == "Required" or (name != "NotRequired" and total)


def _is_sequence_not_str(tp: Any) -> bool:
    return getattr(get_origin(tp) or tp, "__name__", "") == "SequenceNotStr"


def _typeddict(value: Any, tp: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({tp.__name__}), got {type(value).__name__}"]
    hints = get_type_hints(tp, include_extras=True)
    out = [f"{path}: unknown key {k!r} for {tp.__name__}" for k in value if k not in hints]
    totals = _totals(tp)
    out += [f"{path}: missing {k!r} of {tp.__name__}" for k, h in hints.items()
            if _required(totals.get(k, tp.__total__), h) and k not in value]
    for key, item in value.items():
        if key in hints:
            out += problems(item, hints[key], f"{path}.{key}")
    return out
