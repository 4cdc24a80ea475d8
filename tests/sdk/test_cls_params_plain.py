"""A class's parameters are taken as they are or refused: JSON turned NaN into null (the pool
of ``scale=None``), a tuple into a list and a datetime into a string, and the container got
those (probe3 F2)."""

from __future__ import annotations

import datetime
import math

import pytest

import crucible

app = crucible.App("plain-params")


@app.cls()
class Model:
    def __init__(self, scale: float = 1.0, tags: object = None) -> None:
        self.scale, self.tags = scale, tags

    @crucible.method()
    def predict(self, x: float) -> float:
        return x * self.scale


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, (1, 2), datetime.date(2026, 1, 1), {1: "a"}, 2**70, b"x"],
)
def test_a_parameter_json_would_change_is_refused(value: object) -> None:
    with pytest.raises(crucible.InvalidRequestError, match=r"a parameter must be a JSON value"):
        Model(scale=value)


def test_plain_values_are_taken() -> None:
    Model(scale=0.5)
    Model(tags=["a", {"b": [1, 2.5, None, True]}])
    Model(scale=2**63 - 1)


def test_batching_and_concurrency_on_a_class_say_where_they_go() -> None:
    """probe4 F8: @crucible.batched on a method was ignored (each call got one input, a
    string iterated as characters); on the class, the worker batched the method names."""
    other = crucible.App("markers")
    with pytest.raises(crucible.InvalidRequestError, match=r"E\.embed: @crucible\.batched is"):

        @other.cls()
        class E:
            @crucible.method()
            @crucible.batched(max_batch_size=4, wait_ms=10)
            def embed(self, xs: list[str]) -> list[int]:
                return [len(x) for x in xs]

    with pytest.raises(crucible.InvalidRequestError, match=r"on the class F: dynamic batching"):

        @other.cls()
        @crucible.batched(max_batch_size=4, wait_ms=10)
        class F:
            @crucible.method()
            def embed(self, xs: list[str]) -> list[int]:
                return [len(x) for x in xs]

    with pytest.raises(crucible.InvalidRequestError, match=r"G\.f: put @crucible\.concurrent on"):

        @other.cls()
        class G:
            @crucible.method()
            @crucible.concurrent(max_inputs=4)
            def f(self) -> None: ...


def _load() -> None: ...


def test_modals_snap_is_snapshot() -> None:
    """probe4 F4: Modal's `@enter(snap=True)` was a bare TypeError."""
    marked = crucible.enter(snap=True)(_load)
    assert marked.__crucible_enter__ == {"snapshot": True}  # type: ignore[attr-defined]
