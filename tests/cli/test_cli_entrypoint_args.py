"""`crucible run FILE --name value`: arguments converted by the entrypoint's annotations, a
`bool` parameter also taken as a flag (`--verbose`, `--no-verbose`; 'false' was true), and an
`async def` entrypoint run to its end (it printed a coroutine and exited 0)."""

from __future__ import annotations

import sys

import pytest

import crucible
from crucible.cli.run import _find_entrypoint, _kwargs, call_entrypoint, entrypoint_help
from crucible.errors import InvalidRequestError

app = crucible.App("entry-args")
seen: list[tuple[int, bool]] = []


@app.local_entrypoint()
def plain(n: int = 1, verbose: bool = False, label: str = "x") -> str:
    return f"{n} {verbose} {label}"


@app.local_entrypoint()
async def run_async(n: int = 3, verbose: bool = False) -> int:
    seen.append((n, verbose))
    return n * 2


def test_bools_are_flags_or_words() -> None:
    entry = app.entrypoints["plain"]
    assert _kwargs(entry, ["--verbose"]) == {"verbose": True}
    assert _kwargs(entry, ["--verbose", "--n", "2"]) == {"verbose": True, "n": 2}
    assert _kwargs(entry, ["--no-verbose"]) == {"verbose": False}
    assert _kwargs(entry, ["--verbose", "false"]) == {"verbose": False}
    assert _kwargs(entry, ["--verbose", "YES", "--label", "no"]) == {"verbose": True, "label": "no"}
    with pytest.raises(InvalidRequestError, match=r"--verbose='maybe' is not a boolean"):
        _kwargs(entry, ["--verbose", "maybe"])
    with pytest.raises(InvalidRequestError, match="has no parameter 'no_label'"):
        _kwargs(entry, ["--no-label"])  # only a bool has a --no- form


def test_an_async_entrypoint_runs_to_its_end() -> None:
    entry = app.entrypoints["run_async"]
    assert call_entrypoint(entry, _kwargs(entry, ["--n", "4", "--verbose"])) == 8
    assert seen == [(4, True)]


@app.cls()
class Model:
    @crucible.method()
    def predict(self, x: int) -> int:
        return x


def test_a_class_method_is_a_target_and_a_bare_class_says_which() -> None:
    """`crucible run FILE::Model.predict --x 2` runs the method of the default instance, as
    `modal run` does (it was refused: modal2 F10); `FILE::Model` lists the methods."""
    module = sys.modules[__name__]
    entry = _find_entrypoint(module, "Model.predict")
    assert entry.name == "Model.predict"
    assert _kwargs(entry, ["--x", "2"]) == {"x": 2}  # converted by the method's annotations
    with pytest.raises(InvalidRequestError, match=r"is a class \(@app.cls\)") as err:
        _find_entrypoint(module, "Model")
    assert "FILE::Model.predict" in str(err.value)
    with pytest.raises(InvalidRequestError, match=r"Model has no method 'nope'") as err:
        _find_entrypoint(module, "Model.nope")
    assert "FILE::Model.predict" in str(err.value)
    with pytest.raises(InvalidRequestError, match="no local entrypoint, function or class") as err:
        _find_entrypoint(module, "nope")
    assert "Model.predict" in str(err.value)  # class methods are targets too (probe4 F3)


def test_name_equals_value_and_the_entrypoints_help() -> None:
    entry = app.entrypoints["plain"]
    assert _kwargs(entry, ["--n=3", "--label=a=b", "--verbose"]) == {
        "n": 3,
        "label": "a=b",
        "verbose": True,
    }
    text = entrypoint_help(entry, "app.py::plain")
    assert "Usage: crucible run app.py::plain [OPTIONS]" in text
    assert "--n INT  (default: 1)" in text
    assert "--verbose / --no-verbose  (default: False)" in text
