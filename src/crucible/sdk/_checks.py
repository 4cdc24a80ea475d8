"""Checks of the arguments builders pass to decorators and constructors.

Every check raises :class:`~crucible.errors.InvalidRequestError` (or a subclass) with one
line that names the argument, the value it got and what is allowed, before anything is sent
to the exchange. A wire model that still refuses a value (pydantic) is turned into the same
kind of one-line error by :func:`from_validation_error`, never shown as a traceback.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from crucible.errors import InvalidRequestError
from crucible.protocol import egress
from crucible.protocol.apps import SECRET_NAME

__all__ = [
    "NAME_PATTERN",
    "NAME_RULE",
    "check_bool",
    "check_choice",
    "check_int",
    "check_name",
    "check_network",
    "check_number",
    "check_text",
    "from_validation_error",
]

# The names the exchange accepts for apps, functions and deployments (protocol.common.Named).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
NAME_RULE = "1-128 letters, digits, '_', '.' or '-'"


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_int(label: str, value: Any, lo: int, hi: int, *, optional: bool = False) -> int | None:
    """An int (not a bool) in ``[lo, hi]``; None passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"{label} must be an int from {lo} to {hi}, got {_shown(value)} ({_type_name(value)})"
        )
    if value < lo:
        raise InvalidRequestError(f"{label} must be >= {lo} (at most {hi}), got {value}")
    if value > hi:
        raise InvalidRequestError(f"{label} must be <= {hi} (at least {lo}), got {value}")
    return value


def check_scaling(
    min_containers: Any,
    max_containers: Any,
    *,
    names: tuple[str, str] = ("min_containers", "max_containers"),
) -> None:
    """Containers kept warm (0..100,000) and the most at once (1..100,000, None: no cap),
    the warm ones no more than the cap. ``names`` as the caller's user wrote them."""
    lo_name, hi_name = names
    check_int(hi_name, max_containers, 1, 100_000, optional=True)
    check_int(lo_name, min_containers, 0, 100_000)
    if max_containers is not None and min_containers > max_containers:
        raise InvalidRequestError(
            f"{lo_name}={min_containers} is above {hi_name}={max_containers}; "
            f"lower {lo_name} or raise {hi_name}"
        )


def check_number(
    label: str,
    value: Any,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    optional: bool = False,
    unit: str = "",
) -> float | None:
    """An int or float (not a bool) in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``)."""
    if value is None and optional:
        return None
    what = f" {unit}" if unit else ""
    bounds = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        raise InvalidRequestError(
            f"{label} must be a number{' of ' + unit if unit else ''} in {bounds}, "
            f"got {_shown(value)} "
            f"({_type_name(value)})"
        )
    if value < lo or (lo_open and value == lo):
        relation = ">" if lo_open else ">="
        raise InvalidRequestError(
            f"{label} must be {relation} {lo:g}{what} (at most {hi:g}), got {value!r}"
        )
    if value > hi:
        raise InvalidRequestError(f"{label} must be <= {hi:g}{what}, got {value!r}")
    return float(value)


def check_dollars(label: str, value: Any) -> int | None:
    """Dollars per GPU-hour (``None``, or a number in [0, 1000]) as micro-dollars."""
    dollars = check_number(label, value, 0, 1000, optional=True, unit="dollars per GPU-hour")
    return None if dollars is None else round(dollars * 1_000_000)


def check_object_name(kind: str, name: Any) -> str:
    """The name of a volume, secret, dict or queue: 1-128 letters, digits, '_', '.' or '-',
    not only dots (the server's rule, checked before any request)."""
    if not isinstance(name, str) or not SECRET_NAME.match(name):
        raise InvalidRequestError(
            f"{kind} name {str(name)[:80]!r} must be 1-128 letters, digits, '_', '.' or '-'"
        )
    return name


def check_bool(label: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequestError(
            f"{label} must be True or False, got {_shown(value)} ({_type_name(value)})"
        )
    return value


def check_network(value: Any) -> bool | list[str]:
    """``network=``: True, False or a list of ``"HOST:PORT"`` targets (protocol/egress.py),
    returned normalized."""
    try:
        return egress.check_network(value)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None


def check_choice(
    label: str, value: Any, choices: tuple[str, ...], *, aliases: tuple[str, ...] = ()
) -> str:
    """One of ``choices`` (or of ``aliases``, accepted but not listed in the message)."""
    if not isinstance(value, str) or value not in choices + aliases:
        allowed = ", ".join(repr(c) for c in choices)
        raise InvalidRequestError(f"{label} must be one of {allowed}, got {_shown(value)}")
    return value


def check_name(label: str, value: Any, *, optional: bool = False) -> str | None:
    """A name the exchange accepts for an app, function or deployment."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise InvalidRequestError(f"{label} must be {NAME_RULE}, got {_shown(value)}")
    return value


def check_text(label: str, value: Any, max_len: int, *, optional: bool = False) -> str | None:
    """A non-blank string of at most ``max_len`` characters."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise InvalidRequestError(
            f"{label} must be a non-empty string of at most {max_len} characters, "
            f"got {_shown(value)}"
        )
    return value


def from_validation_error(
    exc: ValidationError, where: str, names: Mapping[str, str] | None = None
) -> InvalidRequestError:
    """One line for a wire model's refusal: ``where`` says what was being built (e.g.
    ``"@app.function()"``), ``names`` maps wire field names to the argument the builder
    wrote (``memory_mib`` -> ``memory``)."""
    first = exc.errors()[0]
    loc = [str(p) for p in first.get("loc", ())]
    field = ".".join(loc)
    for part in reversed(loc):
        if names and part in names:
            field = names[part]
            break
    message = str(first.get("msg", "is invalid")).replace("\n", " ")
    message = message.removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if isinstance(got, dict) or got is None else f", got {_shown(got)}"
    head = f"{where}: {field}" if field else where
    return InvalidRequestError(f"{head}: {message}{shown}")
