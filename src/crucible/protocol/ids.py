"""Object identifiers: a type prefix and a time-ordered random part (sortable like ULIDs)."""

from __future__ import annotations

import os
import time

__all__ = ["new_id"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case


def _b32(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """``prefix-`` + 10 chars of milliseconds + 12 random chars; ids sort by creation time."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(8), "big") >> 4  # 60 bits
    return f"{prefix}-{_b32(ms, 10)}{_b32(rand, 12)}"
