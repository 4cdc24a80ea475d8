"""Every wire model is strict and bounded: a test that walks all of them.

``true`` is not an integer, ``0`` is not a boolean, ``"1"`` is not a number, and no integer
is larger than the wire carries (such values used to reach the store and answer 500). The walk
finds every integer, boolean and float field of every model in ``crucible.protocol``, also
inside optionals, lists and dicts, so a field added later is covered without editing this
test.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import types
import typing
from typing import Any, get_args, get_origin

import annotated_types
import orjson
import pytest
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

import crucible.protocol
from crucible.protocol.common import MAX_WIRE_INT, Wire


def _wire_models() -> list[type[Wire]]:
    found: dict[str, type[Wire]] = {}
    for info in pkgutil.iter_modules(crucible.protocol.__path__):
        module = importlib.import_module(f"crucible.protocol.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Wire) and obj is not Wire:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


MODELS = _wire_models()


def _leaves(annotation: Any) -> list[tuple[Any, Any]]:
    """(scalar type, a function that wraps a value so that it lands in that scalar's place)."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _leaves(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [
            leaf for arg in get_args(annotation) if arg is not type(None) for leaf in _leaves(arg)
        ]
    if origin is list:
        return [(t, lambda v, w=wrap: [w(v)]) for t, wrap in _leaves(get_args(annotation)[0])]
    if origin is dict:
        return [(t, lambda v, w=wrap: {"k": w(v)}) for t, wrap in _leaves(get_args(annotation)[1])]
    if annotation in (int, bool, float):
        return [(annotation, lambda v: v)]
    return []


def _cases() -> list[Any]:
    out = []
    for model in MODELS:
        for name, field in model.model_fields.items():
            for scalar, wrap in _leaves(field.annotation):
                out.append(pytest.param(model, name, scalar, wrap, id=f"{model.__name__}.{name}"))
    return out


CASES = _cases()

WRONG: dict[Any, list[Any]] = {
    int: [True, False, "1", 1.5, 2**64, -(2**64), MAX_WIRE_INT * 4],
    bool: [0, 1, "true", "false", 0.0],
    float: [True, "1.5"],
}


def _field_errors(model: type[BaseModel], name: str, data: dict[str, Any]) -> list[Any]:
    alias = model.model_fields[name].alias or name
    errors: list[Any] = []
    for validate in (
        lambda: model.model_validate(data),  # what the server does with a decoded body
        lambda: model.model_validate_json(json.dumps(data)),  # what clients do
    ):
        try:
            validate()
        except ValidationError as exc:
            errors.append([e for e in exc.errors() if e["loc"] and e["loc"][0] == alias])
        else:
            errors.append([])
    return errors


def test_the_walk_finds_the_fields_the_review_named() -> None:
    names = {c.id for c in CASES}
    # "{"cap_micros": false} sets a $0 daily cap", "{"ephemeral": 0} is read as false", and the
    # integers that overflowed into 500s.
    for expected in (
        "DailyCap.cap_micros",
        "AppCreate.ephemeral",
        "Rollback.version",
        "LogSent.ts_ms",
        "Resources.cpu",
    ):
        assert expected in names, sorted(names)
    assert len(CASES) > 100


@pytest.mark.parametrize(("model", "name", "scalar", "wrap"), CASES)
def test_wrong_types_and_overflowing_integers_are_refused(
    model: type[BaseModel], name: str, scalar: Any, wrap: Any
) -> None:
    for bad in WRONG[scalar]:
        for errors in _field_errors(model, name, {name: wrap(bad)}):
            assert errors, f"{model.__name__}.{name} accepted {bad!r} for a {scalar.__name__}"


@pytest.mark.parametrize(
    ("model", "name", "scalar", "wrap"), [c for c in CASES if c.values[2] is int]
)
def test_every_integer_has_a_bound_in_the_schema(
    model: type[BaseModel], name: str, scalar: Any, wrap: Any
) -> None:
    """The OpenAPI description says how large each integer may be (so generated clients and
    schemathesis know), and the bound fits a 64-bit column."""
    schema = orjson.dumps(model.model_json_schema()["properties"][name])
    text = schema.decode()
    assert '"maximum"' in text or '"exclusiveMaximum"' in text, (model.__name__, name, text)


def _narrowest(field: Any) -> tuple[int | None, int | None]:
    """The field's range: the narrowest of every bound declared on it or on its type."""
    lo: list[int] = []
    hi: list[int] = []

    def walk(items: Any) -> None:
        for m in items:
            if isinstance(m, annotated_types.Ge):
                lo.append(int(m.ge))
            elif isinstance(m, annotated_types.Gt):
                lo.append(int(m.gt) + 1)
            elif isinstance(m, annotated_types.Le):
                hi.append(int(m.le))
            elif isinstance(m, annotated_types.Lt):
                hi.append(int(m.lt) - 1)
            elif isinstance(m, FieldInfo):
                walk(m.metadata)

    walk(field.metadata)
    annotation = field.annotation
    if get_origin(annotation) is typing.Annotated:
        walk(get_args(annotation)[1:])
    return (max(lo) if lo else None, min(hi) if hi else None)


@pytest.mark.parametrize(
    ("model", "name", "scalar", "wrap"),
    [c for c in CASES if c.values[2] is int],
)
def test_each_integer_holds_its_narrowest_range(
    model: type[BaseModel], name: str, scalar: Any, wrap: Any
) -> None:
    """One past a field's own range is refused, and the schema shows that range: the wide
    wire bound of ``WireInt`` used to replace a field's own (``WireInt = Field(ge=16)``), in
    validation and in the schema (``context_length: -5`` was accepted)."""
    field = model.model_fields[name]
    if wrap(0) != 0:  # inside a list or a dict: the bounds are the item type's
        return
    lo, hi = _narrowest(field)
    prop = model.model_json_schema()["properties"][name]
    option = next(o for o in prop.get("anyOf", [prop]) if o.get("type") == "integer")
    shown = {
        "minimum": option.get("minimum", option.get("exclusiveMinimum", -(2**70)) + 1),
        "maximum": option.get("maximum", option.get("exclusiveMaximum", 2**70) - 1),
    }
    for bound, key, step in ((lo, "minimum", -1), (hi, "maximum", 1)):
        if bound is None:
            continue
        assert shown[key] == bound, (model.__name__, name, key, option)
        for errors in _field_errors(model, name, {name: bound + step}):
            assert errors, f"{model.__name__}.{name} accepted {bound + step} ({key} {bound})"
