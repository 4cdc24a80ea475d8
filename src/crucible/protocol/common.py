"""Schemas used across resources: payloads, errors, resources, pages."""

from __future__ import annotations

import base64
import copy
import math
import re
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

__all__ = [
    "LABEL_RULE",
    "MAX_WIRE_INT",
    "TERMINAL_STATES",
    "CallState",
    "ErrorBody",
    "ErrorInfo",
    "FlatText",
    "GpuAsk",
    "HostLabel",
    "JsonValue",
    "Named",
    "Payload",
    "PrintableText",
    "Resources",
    "RetryPolicy",
    "Wire",
    "WireInt",
    "Words",
    "is_host_label",
    "read_tolerant",
    "wire_count",
]

# The largest magnitude of an integer on the wire: every JSON reader holds it exactly, and it
# fits a 64-bit store column with room to add. Larger values are refused with 400 (they used
# to reach the store and fail there with 500).
MAX_WIRE_INT = 2**53

# An integer field without a narrower range of its own. A field with one is a plain ``int``
# with both bounds (``Field(ge=16, le=...)``): on ``WireInt`` pydantic keeps only the last
# bound of each kind, the type's wide one (tests/protocol/test_wire_strict.py checks).
WireInt = Annotated[int, Field(ge=-MAX_WIRE_INT, le=MAX_WIRE_INT)]


def _json_only(value: Any) -> Any:
    try:
        orjson.dumps(value)
    except TypeError as exc:
        raise ValueError(
            f"holds a value JSON cannot carry here ({exc}; integers must fit in 64 bits)"
        ) from None
    # NaN and the infinities (Python's JSON reader takes NaN, Infinity and 1e400) would be
    # written as null: the caller's data quietly changed. Walked without recursion.
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(
                f"holds {item!r}, which JSON cannot carry (NaN and infinite numbers are not "
                "JSON); send a finite number, null or a string"
            )
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return value


# Characters that move a terminal's cursor, clear it, change colours or reorder text when a
# string is printed: C0 and C1 controls (ESC starts escape sequences), and the invisible and
# bidirectional formatting marks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def _control_found(value: str) -> str:
    m = _CONTROL.search(value)
    if m is None:
        return ""
    return f"; it holds the control character U+{ord(m.group()):04X} at position {m.start()}"


def _printable(value: str) -> str:
    found = _control_found(value)
    if found:
        raise ValueError(f"must be printable text{found}")
    return value


def _charset(pattern: str, allowed: str) -> Any:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(f"may hold only {allowed}{_control_found(value)}")
        return value

    return AfterValidator(check)


# Text others may see (a GPU's model name, a token's label): printable, no control characters.
PrintableText = Annotated[str, AfterValidator(_printable)]


def _flattened(value: Any) -> Any:
    return _CONTROL.sub(" ", value) if isinstance(value, str) else value


# A diagnostic others may see, written by a program rather than typed (an agent's isolation
# problem, a self-test's error, which may quote a tool's multi-line output): every control
# character becomes a space instead of refusing the whole report.
FlatText = Annotated[str, BeforeValidator(_flattened)]
_LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
LABEL_RULE = "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"


def wire_count(text: str) -> int | None:
    """``text`` as a count or a cursor when it is plain ASCII digits within
    :data:`MAX_WIRE_INT` (what a store column holds); None otherwise. For values read from
    headers, paths and cursors, where a larger number reached the store and failed there."""
    if not (text.isascii() and text.isdigit()) or len(text) > 16:
        return None
    n = int(text)
    return n if n <= MAX_WIRE_INT else None


def is_host_label(value: object) -> bool:
    """Whether ``value`` is a :data:`HostLabel` (a host's name or region)."""
    return isinstance(value, str) and len(value) <= 128 and re.match(_LABEL, value) is not None


# A name others see in listings (a host's name, its region): a hostname's characters.
HostLabel = Annotated[
    str,
    Field(min_length=1, max_length=128, json_schema_extra={"pattern": _LABEL}),
    _charset(_LABEL, "letters, digits, '.', '_' and '-', starting with a letter or digit"),
]
_WORDS = r"^[A-Za-z0-9][A-Za-z0-9 _.+/\-]*$"
# A short phrase others see (a host's energy source: "solar", "wind + hydro").
Words = Annotated[
    str,
    Field(min_length=1, max_length=64, json_schema_extra={"pattern": _WORDS}),
    _charset(
        _WORDS,
        "letters, digits, spaces and '.', '_', '+', '/', '-', starting with a letter or digit",
    ),
]


# Free-form JSON (a job's input, a function's web or class parameters): anything JSON holds,
# within what the server can store and forward.
JsonValue = Annotated[Any, AfterValidator(_json_only)]


class Wire(BaseModel):
    """Base of every wire model: unknown fields are refused so typos surface as 400, and
    types are strict: ``true`` is not an integer, ``0`` is not a boolean and ``"1"`` is not a
    number (a ``{"cap_micros": false}`` once set a $0 cap). Enum fields that must accept
    their string values from decoded JSON opt out per field (``Field(strict=False)``)."""

    # Infinity and NaN are never meaningful on the wire (and JSON stores refuse them).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


_W = TypeVar("_W", bound=BaseModel)


def read_tolerant(model: type[_W], raw: object) -> _W:
    """``raw`` validated as ``model``, except that fields this version does not know are
    dropped instead of refused: for what a *newer* peer wrote (a spec a newer replica stored
    during a rolling upgrade, a newer server's reply to an older agent). Every other rule
    still holds, and a client's request is still read strictly (a typo there is a 400)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        if not all(e["type"] == "extra_forbidden" for e in errors):
            raise
        pruned = copy.deepcopy(raw)
        for e in errors:
            *path, key = e["loc"]
            node: Any = pruned
            for step in path:
                node = node[step]
            if isinstance(node, dict):
                node.pop(key, None)
        return model.model_validate(pruned)


class Payload(Wire):
    """Opaque bytes (cloudpickle made by the SDK or a worker). Exactly one of ``data`` (base64,
    at most the inline limit) or ``ref`` (sha256 of a blob in the blob store) is set. The control
    plane stores and forwards payloads; it never decodes them."""

    data: str | None = None
    ref: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size: int = Field(default=0, ge=0, le=2**53)

    @classmethod
    def inline(cls, raw: bytes) -> Payload:
        return cls(data=base64.b64encode(raw).decode("ascii"), size=len(raw))

    def raw(self) -> bytes:
        if self.data is None:
            raise ValueError("payload is a blob reference; fetch it from the blob store")
        return base64.b64decode(self.data)


class ErrorInfo(Wire):
    """Why a call failed. ``code`` is an error code from :mod:`crucible.errors`."""

    code: str = Field(max_length=64)
    message: str
    exc_type: str | None = None
    traceback: str | None = None
    # cloudpickle of the exception object, made by the worker; only SDKs unpickle it.
    exception: Payload | None = None


# How the worker's error begins when it could not load the function (an import error, an
# @crucible.enter() hook that raised): the calls it was given fail with it.
LOAD_FAILED = "the container could not load the function"


class ErrorBody(Wire):
    error: dict[str, str]


class GpuAsk(Wire):
    model: str
    count: int = Field(ge=1, le=64)


class Resources(Wire):
    cpu: float = Field(default=0.25, gt=0, le=1024)
    memory_mib: int = Field(default=512, ge=16, le=16 * 1024 * 1024)
    # Fallback order: the first that fits wins. Empty: no GPU.
    gpus: list[GpuAsk] = Field(default_factory=list, max_length=16)
    # Disk on the host's own filesystem (a pod's disk): only hosts whose agent measured at
    # least this much free space run it. 0: none beyond the sandbox's scratch space.
    disk_mib: int = Field(default=0, ge=0, le=64 * 1024 * 1024)


class RetryPolicy(Wire):
    max_retries: int = Field(default=0, ge=0, le=100)
    initial_delay_s: float = Field(default=1.0, ge=0, le=3600)
    backoff_coefficient: float = Field(default=2.0, ge=1.0, le=10.0)
    max_delay_s: float = Field(default=60.0, ge=0, le=3600)


class CallState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self not in (CallState.QUEUED, CallState.RUNNING)


TERMINAL_STATES = tuple(s.value for s in CallState if s.terminal)


def _not_only_dots(name: str) -> str:
    if set(name) == {"."}:
        raise ValueError(
            f"{name!r} is only dots, which a URL path reads as a folder; add a letter or digit"
        )
    return name


class Named(Wire):
    # The pattern also rules out blank names; "." and ".." would name no object in a URL.
    name: Annotated[
        str,
        Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$"),
        AfterValidator(_not_only_dots),
    ]
