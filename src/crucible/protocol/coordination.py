"""Dicts and queues: small durable objects that calls of one account share (``crucible.Dict``,
``crucible.Queue``). Keys and values are opaque bytes the control plane stores and returns
without decoding (the SDK pickles values and encodes keys canonically)."""

from __future__ import annotations

from pydantic import Field

from crucible.protocol.common import Named, Wire, WireInt

__all__ = [
    "DictEntry",
    "DictInfo",
    "DictItems",
    "DictKeys",
    "DictPut",
    "ObjectCreate",
    "QueueClear",
    "QueueGet",
    "QueueInfo",
    "QueueItems",
    "QueuePut",
]

MAX_KEY_B64 = 4096
MAX_VALUE_B64 = 2 * 1024 * 1024  # 1.5 MiB of raw bytes: bigger data belongs in a volume/blob
MAX_BATCH = 1000
PARTITION = r"^[A-Za-z0-9_.\-]{0,64}$"  # "" is the default partition


class ObjectCreate(Named):
    """Create a dict or queue (``create_if_missing`` answers the existing one)."""

    create_if_missing: bool = True


class DictInfo(Wire):
    name: str
    entries: WireInt
    bytes: WireInt
    created_ms: WireInt
    last_used_ms: WireInt


class QueueInfo(Wire):
    name: str
    items: WireInt
    bytes: WireInt
    partitions: dict[str, WireInt] = Field(default_factory=dict)
    created_ms: WireInt
    last_used_ms: WireInt


class DictEntry(Wire):
    key: str = Field(min_length=1, max_length=MAX_KEY_B64)  # base64 of the canonical key
    value: str = Field(max_length=MAX_VALUE_B64)  # base64 of the value's bytes


class DictPut(Wire):
    entries: list[DictEntry] = Field(min_length=1, max_length=MAX_BATCH)
    # Only keys that are not there yet are written (dict.put(..., skip_if_exists=True)).
    skip_if_exists: bool = False


class DictKeys(Wire):
    keys: list[str] = Field(min_length=1, max_length=MAX_BATCH)


class DictItems(Wire):
    entries: list[DictEntry]
    # Set when the listing has more: pass it back as ``after`` for the next page.
    next_after: str | None = None


class QueuePut(Wire):
    values: list[str] = Field(min_length=1, max_length=MAX_BATCH)  # base64 each
    partition: str = Field(default="", max_length=64, pattern=PARTITION)


class QueueGet(Wire):
    n: int = Field(default=1, ge=1, le=MAX_BATCH)
    partition: str = Field(default="", max_length=64, pattern=PARTITION)
    timeout_s: float = Field(default=0.0, ge=0, le=60)  # long poll; the SDK loops for longer


class QueueClear(Wire):
    partition: str = Field(default="", max_length=64, pattern=PARTITION)
    all: bool = False  # every partition


class QueueItems(Wire):
    values: list[str]
