"""Object identifiers: a type prefix and a time-ordered random part (sortable like ULIDs)."""

from __future__ import annotations

import base64
import os
import threading
import time

__all__ = ["new_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case: sorts like ASCII
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET)

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
    # 50 bits of time and 60 of randomness in 15 bytes; the top 10 bits are zero, so the first
    # two base32 characters are dropped.
    raw = ((ms << 60) | rand).to_bytes(15, "big")
    return f"{prefix}-{base64.b32encode(raw).decode()[2:].translate(_FROM_RFC4648)}"
