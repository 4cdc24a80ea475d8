"""A result that runs the container out of memory while it is pickled is said to be a matter
of memory=, not of its type ("return plain data" was the advice for a 100 MiB bytes)."""

from __future__ import annotations

from typing import Any

import pytest

from crucible.errors import SerializationError
from crucible.sdk._serialization import serialize_value


class TooBigToCopy:
    def __reduce__(self) -> Any:
        raise MemoryError


def test_out_of_memory_while_pickling_a_result_names_memory() -> None:
    with pytest.raises(SerializationError) as caught:
        serialize_value(TooBigToCopy(), "the return value of big")
    message = caught.value.message
    assert "out of memory while copying it" in message and "memory=" in message
    assert "return plain data" not in message
