"""crucible.Image: content identity, validation, and local files read only when needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

import crucible
from crucible.protocol.images import ImageSpec


def test_identity_is_the_content() -> None:
    a = crucible.Image().pip_install("six==1.16.0").env({"A": "1"})
    b = crucible.Image().uv_pip_install(["six==1.16.0"]).env({"A": "1"})
    assert a.id == b.id and len(a.id) == 64
    c = a.env({"A": "2"})
    assert c.id != a.id
    # Run-time settings change the image, not its build.
    assert c.spec().build_hash() == a.spec().build_hash()
    assert a.pip_install("rich").spec().build_hash() != a.spec().build_hash()


def test_local_files_are_hashed_and_read_lazily(tmp_path: Path) -> None:
    assets = tmp_path / "assets"
    image = crucible.Image().add_local_dir(assets, "/assets")  # not there yet: fine
    assets.mkdir()
    (assets / "a.txt").write_text("one")
    first = image.spec()
    (assets / "a.txt").write_text("two")
    again = crucible.Image().add_local_dir(assets, "/assets").spec()
    assert first.id != again.id
    assert list(crucible.Image().add_local_dir(assets, "/assets").blobs()) == again.blobs


def test_misuse_is_refused_with_a_clear_error() -> None:
    with pytest.raises(crucible.InvalidRequestError, match="absolute"):
        crucible.Image().add_local_dir(".", "relative")
    with pytest.raises(crucible.InvalidRequestError, match="requirement"):
        crucible.Image().pip_install("--index-url=http://evil")
    with pytest.raises(crucible.InvalidRequestError, match="not allowed"):
        crucible.Image().env({"CRUCIBLE_CONTAINER_TOKEN": "x"})
    with pytest.raises(crucible.InvalidRequestError, match="module name"):
        crucible.Image().preload("not a module")
    with pytest.raises(crucible.InvalidRequestError, match=r"crucible\.Image"):
        crucible.App("x").function(image="python:3.11")  # type: ignore[arg-type]


def test_the_wire_refuses_an_id_that_does_not_match() -> None:
    spec = crucible.Image().pip_install("six").spec()
    body = spec.model_dump()
    body["env"] = {"SNEAKY": "1"}
    with pytest.raises(ValidationError, match="does not match"):
        ImageSpec.model_validate(body)


def test_enter_needs_parentheses() -> None:
    with pytest.raises(crucible.InvalidRequestError, match="parentheses"):

        @crucible.enter  # type: ignore[arg-type]
        def setup() -> None: ...
