"""The agent's image cache: real uv builds (of environments without packages, so no index is
needed), reuse, LRU eviction that spares images in use, and failures with uv's message."""

from __future__ import annotations

import io
import subprocess
import zipfile
from pathlib import Path

import pytest

from crucible.agent.images import ImageCache, find_uv
from crucible.errors import ImageBuildError
from crucible.protocol.images import BuildStep, ImageSpec


def _zip(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def _image(module: str, value: int) -> tuple[ImageSpec, dict[str, bytes]]:
    import hashlib

    data = _zip({f"{module}.py": f"VALUE = {value}\n" + "# padding\n" * 2000})
    sha = hashlib.sha256(data).hexdigest()
    return ImageSpec(steps=[BuildStep(kind="python", blob=sha)]), {sha: data}


@pytest.fixture
def uv() -> str:
    try:
        return find_uv()
    except ImageBuildError as exc:
        pytest.skip(str(exc))


def test_build_once_then_reuse(tmp_path: Path, uv: str) -> None:
    cache = ImageCache(tmp_path / "images", uv_bin=uv)
    spec, blobs = _image("shipped", 7)
    lines: list[str] = []
    built = cache.ensure(spec, blobs.__getitem__, lines.append)
    assert not built.cached and lines  # the installer's output was streamed
    out = subprocess.run(
        [str(built.python), "-c", "import shipped, crucible; print(shipped.VALUE)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "7"
    assert cache.ensure(spec, lambda sha: pytest.fail("fetched again")).cached


def test_least_recently_used_images_are_evicted_but_not_those_in_use(
    tmp_path: Path, uv: str
) -> None:
    cache = ImageCache(tmp_path / "images", uv_bin=uv)
    one, b1 = _image("one", 1)
    two, b2 = _image("two", 2)
    three, b3 = _image("three", 3)
    first = cache.ensure(one, b1.__getitem__)
    cache.acquire(first.key)  # a zygote runs on it
    second = cache.ensure(two, b2.__getitem__)
    # Room for about two images: building a third must evict one, and `one` is in use.
    cache.max_bytes = first.size_bytes + second.size_bytes + 1024
    third = cache.ensure(three, b3.__getitem__)
    left = {key for key, _, _ in cache.images()}
    assert left == {first.key, third.key}
    cache.release(first.key)
    cache.max_bytes = third.size_bytes + 1024
    assert cache.evict() == [first.key]
    assert {key for key, _, _ in cache.images()} == {third.key}


def test_a_failed_install_raises_with_uvs_message(
    tmp_path: Path, uv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_OFFLINE", "1")  # fails the same way with or without an index
    cache = ImageCache(tmp_path / "images", uv_bin=uv)
    spec = ImageSpec(steps=[BuildStep(kind="pip", packages=["crucible-no-such-package-zz"])])
    with pytest.raises(ImageBuildError, match="crucible-no-such-package-zz"):
        cache.ensure(spec, lambda sha: b"")
    assert cache.images() == []  # nothing half-built is kept
