"""One explainer for pydantic validation errors, generic over our models (site file, EDF, vetting profile,
trainer config): the key path as the user wrote it, and for an unknown key the closest known one.

The model that holds a key is found by walking the type annotations from the root model along the error's
location (nested models, `dict[str, Model]`, `tuple[Model, ...]`, optional and discriminated unions), so no
table of child keys is kept by hand.
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel


def key_path(loc: tuple | list) -> str:
    """`platforms.ml.vclusters.clariden.partitions[0].name` from pydantic's loc tuple."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _members(t: Any) -> tuple:
    """The types a union (or Optional, or Annotated) stands for; (t,) for anything else."""
    origin = typing.get_origin(t)
    if origin is typing.Annotated:
        return _members(typing.get_args(t)[0])
    if origin in (typing.Union, types.UnionType):
        return tuple(m for a in typing.get_args(t) for m in _members(a))
    return (t,)


def _is_model(t: Any) -> bool:
    return isinstance(t, type) and issubclass(t, BaseModel)


def _tag_of(model: type[BaseModel]) -> set[str]:
    """Literal values of a model's fields: what a discriminated union puts in the loc to name its member."""
    tags = set()
    for f in model.model_fields.values():
        if typing.get_origin(f.annotation) is typing.Literal:
            tags.update(str(v) for v in typing.get_args(f.annotation))
    return tags


def _step(t: Any, part: Any) -> tuple[Any, bool]:
    """The type one loc part leads to from t, and whether the part was consumed (a union's tag is not a
    key but names the member the next part belongs to)."""
    for m in _members(t):
        if _is_model(m) and isinstance(part, str) and part in m.model_fields:
            return m.model_fields[part].annotation, True
    for m in _members(t):
        origin, args = typing.get_origin(m), typing.get_args(m)
        if origin in (dict, typing.Mapping) and len(args) == 2:
            return args[1], True
        if origin in (tuple, list, set, frozenset) and args:
            return args[0], True
    models = [m for m in _members(t) if _is_model(m)]
    tagged = [m for m in models if str(part) in _tag_of(m)]
    if tagged:
        return tagged[0], True
    return (models[0] if len(models) == 1 else t), False


def model_at(root: type[BaseModel], loc: tuple | list) -> type[BaseModel] | None:
    """The model whose key loc[-1] is (None when the path leads to no model)."""
    t: Any = root
    for part in loc[:-1]:
        t, _ = _step(t, part)
    models = [m for m in _members(t) if _is_model(m)]
    return models[0] if models else None


def did_you_mean(key: str, known: list[str] | tuple[str, ...]) -> str:
    """`did you mean 'nodes'?`, or the keys allowed there when none is close."""
    match = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f"did you mean {match[0]!r}?" if match else f"allowed keys here: {', '.join(sorted(known)) or 'none'}"


def explain(root: type[BaseModel], err: dict, example: str) -> str:
    """One line for one pydantic error: `key.path: what is wrong; how to fix it`.

    `example` names where a valid file can be seen (e.g. "see sites/local.yaml for an example").
    """
    loc = tuple(err["loc"])
    path = key_path(loc)
    if err["type"] == "extra_forbidden":
        holder = model_at(root, loc)
        known = list(holder.model_fields) if holder else []
        return f"{path}: unknown key {loc[-1]!r}; {did_you_mean(str(loc[-1]), known)}"
    if err["type"] == "missing":
        return f"{path}: required key is missing; add it ({example})"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error":  # our own validators already say what to write
        return f"{path}: {msg}"
    value = err.get("input")
    shown = f" (got {value!r})" if isinstance(value, (str, int, float, bool)) else ""
    return f"{path}: {msg}{shown}; fix the value ({example})"
