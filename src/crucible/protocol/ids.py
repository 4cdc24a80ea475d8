"""Object identifiers: a type prefix and a time-ordered random part (sortable like ULIDs)."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["first_id_at", "new_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case: sorts like ASCII
# Two characters per 10 bits: an id is 11 table lookups.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]

_lock = threading.Lock()
_last = [0, 0]  # ms, random part of the last id made in this process


def new_id(prefix: str) -> str:
    """``prefix-`` + 10 chars of milliseconds + 12 random chars.

    Ids sort by creation time, and ids made by one process in the same millisecond are
    increasing (the random part is incremented), so a batch of calls sorts in input order.
    """
    ms = time.time_ns() // 1_000_000
    with _lock:
        if ms <= _last[0]:
            ms = _last[0]
            rand = _last[1] + 1
        else:
            rand = int.from_bytes(os.urandom(8), "big") >> 5  # 59 bits: room to increment
        _last[0], _last[1] = ms, rand
    # 50 bits of time then 60 of randomness, most significant first (so ids sort by time).
    value = (ms << 60) | rand
    chars = [_PAIRS[(value >> shift) & 1023] for shift in range(100, -10, -10)]
    return f"{prefix}-{''.join(chars)}"


def first_id_at(prefix: str, ms: int) -> str:
    """The smallest id ``new_id(prefix)`` can make at or after epoch millisecond ``ms``: ids
    compare against it to select what was created since then, by index range."""
    value = max(0, ms) << 60
    chars = [_PAIRS[(value >> shift) & 1023] for shift in range(100, -10, -10)]
    return f"{prefix}-{''.join(chars)}"
