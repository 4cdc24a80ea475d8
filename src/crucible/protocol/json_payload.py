"""JSON payloads: how calls from the job API (clients in any language) travel.

The SDK's payloads are cloudpickle, which only the worker ever decodes. A job API call's
input is JSON instead, marked by a prefix no pickle starts with; the worker decodes it,
calls the function, and answers in JSON too, so the control plane can hand the output to the
client by decoding JSON only (it never unpickles tenant data).

The input is ``{"args": [...], "kwargs": {...}}``.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["MAGIC", "decode", "encode", "is_json"]

MAGIC = b"CRUCIBLE-JSON\n"


def encode(value: Any) -> bytes:
    """JSON bytes with the marker; TypeError when ``value`` is not JSON."""
    return MAGIC + orjson.dumps(value)


def is_json(data: bytes) -> bool:
    return data.startswith(MAGIC)


def decode(data: bytes) -> Any:
    return orjson.loads(data[len(MAGIC) :])
