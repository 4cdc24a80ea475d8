"""Free-form JSON on the wire (a job's `input`, `args`, `kwargs`; a function's `web` and
`class_params`): NaN and the infinities are refused, naming them, where they were quietly
written as null (Python's JSON reader takes NaN, Infinity and 1e400)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from crucible.protocol.jobs import JobInput


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused_wherever_they_are(raw: str) -> None:
    for body in (
        f'{{"input": {{"x": {raw}}}}}',
        f'{{"args": [[1, [2, {raw}]]]}}',
        f'{{"kwargs": {{"a": {{"b": [{raw}]}}}}}}',
    ):
        with pytest.raises(ValidationError, match="which JSON cannot carry"):
            JobInput.model_validate(json.loads(body))


def test_finite_values_pass_as_they_are() -> None:
    value = {"x": [1, 2.5, -0.0, None, "NaN", {"y": 2**63}], "z": True}
    assert JobInput.model_validate({"input": value}).input == value
