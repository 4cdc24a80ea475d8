"""The agent's OCI image cache against a real registry (docker-registry on loopback)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible.agent.oci import OciImages, RegistryAuth, RegistryConfig
from crucible.agent.oci.python import find_python, require_python
from crucible.errors import (
    ImageDigestError,
    ImageNotFoundError,
    ImagePullError,
    ImageTooLargeError,
    ImageUnsupportedError,
)
from oci_testlib import (
    Entry,
    Registry,
    TokenGateway,
    layer,
    manifest_size,
    push_image,
    push_index,
    run_registry,
)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with run_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def cache(tmp_path: Path, reg_host: str, **kw: object) -> OciImages:
    config = RegistryConfig(insecure=frozenset({reg_host}), timeout_s=10)
    return OciImages(tmp_path / "oci", registries=config, **kw)  # type: ignore[arg-type]


BASE = layer(
    [
        Entry("etc", kind="dir"),
        Entry("etc/os-release", b"ID=tiny\n"),
        Entry("bin", kind="dir"),
        Entry("bin/hello", b"#!/bin/sh\necho hi\n", mode=0o755),
        Entry("a", kind="dir"),
        Entry("a/x", b"x"),
        Entry("a/y", b"y"),
        Entry("d", kind="dir"),
        Entry("d/old1", b"1"),
        Entry("d/old2", b"2"),
    ]
)


def test_anonymous_pull_gives_rootfs_and_config(tmp_path: Path, registry: Registry) -> None:
    digest = push_image(
        registry,
        "tiny/app",
        "v1",
        [BASE],
        env=["PATH=/bin", "GREETING=hello world"],
        workdir="/srv",
        user="1234:1234",
        entrypoint=["/bin/hello"],
        cmd=["--flag"],
    )
    images = cache(tmp_path, registry.host)
    lines: list[str] = []
    img = images.prepare(f"{registry.host}/tiny/app:v1", None, lines.append)
    assert img.digest == digest
    assert img.pulled
    assert (img.rootfs / "etc/os-release").read_text() == "ID=tiny\n"
    assert os.access(img.rootfs / "bin/hello", os.X_OK)
    assert img.env == {"PATH": "/bin", "GREETING": "hello world"}
    assert (img.workdir, img.user) == ("/srv", "1234:1234")
    assert (img.entrypoint, img.cmd) == (["/bin/hello"], ["--flag"])
    assert img.size_bytes == len("ID=tiny\n") + len("#!/bin/sh\necho hi\n") + 4
    assert any("pulling" in line for line in lines)
    # Mount points for the sandbox exist in every rootfs.
    assert (img.rootfs / "crucible/work").is_dir() and (img.rootfs / "proc").is_dir()
    # Warm: no download at all, by tag (one manifest request) or by digest (none).
    before = images.bytes_downloaded
    again = images.prepare(f"{registry.host}/tiny/app:v1")
    assert again.digest == digest and not again.pulled
    pinned = images.prepare(f"{registry.host}/tiny/app@{digest}")
    assert pinned.rootfs == img.rootfs
    assert images.bytes_downloaded == before


def test_whiteouts_and_opaque_dirs(tmp_path: Path, registry: Registry) -> None:
    top = layer(
        [
            Entry("a/.wh.x", b""),
            Entry("d", kind="dir"),
            Entry("d/.wh..wh..opq", b""),
            Entry("d/new", b"n"),
            Entry("etc/.wh.os-release", b""),
            Entry("etc/os-release", b"ID=again\n"),  # deleted below, recreated here
        ]
    )
    push_image(registry, "tiny/whiteouts", "v1", [BASE, top])
    img = cache(tmp_path, registry.host).prepare(f"{registry.host}/tiny/whiteouts:v1")
    assert sorted(os.listdir(img.rootfs / "a")) == ["y"]
    assert sorted(os.listdir(img.rootfs / "d")) == ["new"]
    assert (img.rootfs / "etc/os-release").read_text() == "ID=again\n"
    assert not list(img.rootfs.rglob(".wh.*"))


def test_hostile_layers_are_refused_or_defused(tmp_path: Path, registry: Registry) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    images = cache(tmp_path, registry.host)
    # '..' in a name
    push_image(registry, "evil/dotdot", "v1", [layer([Entry("../../escape", b"x")])])
    with pytest.raises(ImageUnsupportedError, match="unsafe path"):
        images.prepare(f"{registry.host}/evil/dotdot:v1")
    # a symlink to a host directory, then a file written through it
    through = layer([Entry("link", kind="symlink", target=str(outside)), Entry("link/pwned", b"x")])
    push_image(registry, "evil/symlink", "v1", [through])
    with pytest.raises(ImageUnsupportedError, match="through the symlink"):
        images.prepare(f"{registry.host}/evil/symlink:v1")
    # the same across layers: the link in one layer, the write in the next
    push_image(
        registry,
        "evil/symlink2",
        "v1",
        [
            layer([Entry("link", kind="symlink", target=str(outside))]),
            layer([Entry("link/pwned", b"x")]),
        ],
    )
    # defused as overlayfs would: the upper directory replaces the lower link
    two = images.prepare(f"{registry.host}/evil/symlink2:v1")
    assert not (two.rootfs / "link").is_symlink()
    assert (two.rootfs / "link/pwned").read_bytes() == b"x"
    # a hard link to a host file
    push_image(
        registry, "evil/hardlink", "v1", [layer([Entry("h", kind="link", target="/etc/passwd")])]
    )
    with pytest.raises(ImageUnsupportedError, match="hard link"):
        images.prepare(f"{registry.host}/evil/hardlink:v1")
    assert os.listdir(outside) == []
    # device nodes are skipped, setuid bits dropped, absolute names kept inside
    benign = layer(
        [
            Entry("dev", kind="dir"),
            Entry("dev/mem", kind="chardev"),
            Entry("fifo", kind="fifo"),
            Entry("suid", b"#!/bin/sh\n", mode=0o4755),
            Entry("/abs/file", b"a"),
        ]
    )
    push_image(registry, "evil/benign", "v1", [benign])
    img = images.prepare(f"{registry.host}/evil/benign:v1")
    assert not (img.rootfs / "dev/mem").exists() and not (img.rootfs / "fifo").exists()
    assert os.stat(img.rootfs / "suid").st_mode & 0o6000 == 0
    assert (img.rootfs / "abs/file").read_bytes() == b"a"
    # nothing half-pulled is left as an image
    assert {d for d, _, _ in images.images()} == {img.digest, two.digest}


def test_tampered_blob_is_refused(tmp_path: Path, registry: Registry) -> None:
    push_image(registry, "tiny/tamper", "v1", [BASE])
    gw = TokenGateway(upstream=registry.url, tamper=True, require_token=False).start()
    try:
        images = cache(tmp_path, gw.host)
        with pytest.raises(ImageDigestError, match="does not hash to its digest"):
            images.prepare(f"{gw.host}/tiny/tamper:v1")
        assert images.images() == []
        assert not any((tmp_path / "oci/blobs/sha256").iterdir())
        gw.tamper = False  # the same pull, untampered, works
        assert images.prepare(f"{gw.host}/tiny/tamper:v1").pulled
    finally:
        gw.stop()


def test_basic_auth(tmp_path: Path) -> None:
    with run_registry(tmp_path / "reg", htpasswd=("bob", "hunter2-pw")) as reg:
        push_image(reg, "private/app", "v1", [BASE])
        ref = f"{reg.host}/private/app:v1"
        with pytest.raises(ImagePullError, match="refused") as anon:
            cache(tmp_path / "a", reg.host).prepare(ref)
        assert "anonymously" in str(anon.value)
        with pytest.raises(ImagePullError, match="refused") as wrong:
            cache(tmp_path / "b", reg.host).prepare(ref, RegistryAuth("bob", "not-the-pw"))
        assert "not-the-pw" not in str(wrong.value)
        img = cache(tmp_path / "c", reg.host).prepare(ref, RegistryAuth("bob", "hunter2-pw"))
        assert (img.rootfs / "a/x").read_bytes() == b"x"
        assert "hunter2" not in repr(RegistryAuth("bob", "hunter2-pw"))


def test_bearer_token_server(tmp_path: Path, registry: Registry) -> None:
    push_image(registry, "tokened/app", "v1", [BASE])
    gw = TokenGateway(upstream=registry.url).start()
    try:
        ref = f"{gw.host}/tokened/app:v1"
        with pytest.raises(ImagePullError, match="token service refused") as exc:
            cache(tmp_path / "a", gw.host).prepare(ref, RegistryAuth("alice", "wrong-pw"))
        assert "wrong-pw" not in str(exc.value)
        img = cache(tmp_path / "b", gw.host).prepare(ref, RegistryAuth("alice", "s3cret-pw"))
        assert (img.rootfs / "a/y").read_bytes() == b"y"
        assert any(
            p.startswith("/token?") and "repository%3Atokened%2Fapp%3Apull" in p for p in gw.paths
        )
    finally:
        gw.stop()


def test_shared_layers_download_once_and_share_inodes(tmp_path: Path, registry: Registry) -> None:
    one = layer([Entry("one", b"1" * 1000)])
    two = layer([Entry("two", b"2" * 1000)])
    push_image(registry, "shared/one", "v1", [BASE, one])
    push_image(registry, "shared/two", "v1", [BASE, two])
    images = cache(tmp_path, registry.host)
    a = images.prepare(f"{registry.host}/shared/one:v1")
    n_blobs, n_bytes = images.blobs_downloaded, images.bytes_downloaded
    b = images.prepare(f"{registry.host}/shared/two:v1")
    # the second pull fetched its config and its own layer, not the base again
    assert images.blobs_downloaded - n_blobs == 2
    assert images.bytes_downloaded - n_bytes < len(BASE) + len(two) + 1000
    assert (
        os.stat(a.rootfs / "etc/os-release").st_ino == os.stat(b.rootfs / "etc/os-release").st_ino
    )


def test_lru_eviction_spares_images_in_use(tmp_path: Path, registry: Registry) -> None:
    refs = []
    for i in range(3):
        push_image(registry, f"lru/img{i}", "v1", [layer([Entry(f"f{i}", os.urandom(100_000))])])
        refs.append(f"{registry.host}/lru/img{i}:v1")
    images = cache(tmp_path, registry.host, max_bytes=250_000)
    first = images.prepare(refs[0])
    images.acquire(first.digest)
    second = images.prepare(refs[1])
    third = images.prepare(refs[2])  # over the limit: the LRU image not in use goes
    kept = {d for d, _, _ in images.images()}
    assert kept == {first.digest, third.digest}
    assert second.digest not in kept and not second.rootfs.exists()
    assert images.usage_bytes() <= 250_000
    images.release(first.digest)
    images.prepare(refs[1])  # now the first one is the LRU and not in use
    assert {d for d, _, _ in images.images()} == {third.digest, second.digest}


def test_concurrent_pulls_download_once(tmp_path: Path, registry: Registry) -> None:
    push_image(registry, "conc/app", "v1", [BASE, layer([Entry("big", os.urandom(300_000))])])
    images = cache(tmp_path, registry.host)
    results: list[str] = []
    errors: list[BaseException] = []

    def pull() -> None:
        try:
            results.append(images.prepare(f"{registry.host}/conc/app:v1").digest)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pull) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1 and len(results) == 4
    assert images.blobs_downloaded == 3  # config + two layers, once
    assert len(images.images()) == 1


def test_index_selects_this_platform(tmp_path: Path, registry: Registry) -> None:
    amd = push_image(registry, "multi/app", "amd", [BASE])
    arm = push_image(registry, "multi/app", "arm", [layer([Entry("arm", b"")])], arch="arm64")
    push_index(
        registry,
        "multi/app",
        "latest",
        [
            (arm, "arm64", manifest_size(registry, "multi/app", arm)),
            (amd, "amd64", manifest_size(registry, "multi/app", amd)),
        ],
    )
    img = cache(tmp_path, registry.host).prepare(f"{registry.host}/multi/app")
    assert img.digest == amd
    push_index(
        registry,
        "multi/app",
        "armonly",
        [(arm, "arm64", manifest_size(registry, "multi/app", arm))],
    )
    with pytest.raises(ImageUnsupportedError, match="linux/arm64"):
        cache(tmp_path / "x", registry.host).prepare(f"{registry.host}/multi/app:armonly")


def test_clear_errors(tmp_path: Path, registry: Registry) -> None:
    images = cache(tmp_path, registry.host)
    with pytest.raises(ImageNotFoundError, match="no manifest 'nope'"):
        images.prepare(f"{registry.host}/tiny/app:nope")
    with pytest.raises(ImagePullError, match="unreachable"):
        cache(tmp_path, "127.0.0.1:9").prepare("127.0.0.1:9/tiny/app:v1")
    with pytest.raises(ImagePullError, match="must be lowercase"):
        images.prepare("Not A Ref")
    push_image(registry, "big/app", "v1", [layer([Entry("big", os.urandom(200_000))])])
    small = cache(tmp_path / "small", registry.host, max_image_bytes=100_000)
    with pytest.raises(ImageTooLargeError, match=r"\(CRUCIBLE_OCI_IMAGE_MAX_MIB\)"):
        small.prepare(f"{registry.host}/big/app:v1")


def test_python_check(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    assert find_python(root) is None
    with pytest.raises(ImageUnsupportedError, match=r"has no Python.*>= 3.11"):
        require_python(root, "x")
    (root / "usr/bin/python3.9").write_bytes(b"")
    with pytest.raises(ImageUnsupportedError, match=r"has Python 3.9.*>= 3.11"):
        require_python(root, "x")
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/python3.12").write_bytes(b"")
    (root / "usr/bin/python3.13").symlink_to("/usr/local/bin/nowhere")  # dangling: ignored
    found = require_python(root, "x")
    assert (found.path, found.version) == ("/usr/local/bin/python3.12", (3, 12))


def test_docker_hub_short_names_through_a_mirror(tmp_path: Path, registry: Registry) -> None:
    """``hubby:v1`` is docker.io/library/hubby:v1; with a mirror for docker.io the agent pulls
    it from the mirror (here the loopback registry), never from the internet."""
    digest = push_image(registry, "library/hubby", "v1", [BASE])
    config = RegistryConfig.parse(f"docker.io={registry.url}")
    images = OciImages(tmp_path / "oci", registries=config)
    img = images.prepare("hubby:v1")
    assert img.digest == digest and img.ref == "docker.io/library/hubby:v1"


def test_gzip_bomb_stops_at_the_unpacked_limit(tmp_path: Path, registry: Registry) -> None:
    bomb = layer([Entry("zeros", bytes(2_000_000))])  # ~2 KB compressed, 2 MB unpacked
    push_image(registry, "evil/bomb", "v1", [bomb])
    images = cache(tmp_path, registry.host, max_image_bytes=200_000)  # unpacked: 800 kB
    with pytest.raises(ImageTooLargeError, match="unpacks to more than"):
        images.prepare(f"{registry.host}/evil/bomb:v1")
    assert images.images() == []


def test_leftovers_of_a_dead_pull_are_swept(tmp_path: Path) -> None:
    root = tmp_path / "oci"
    OciImages(root)
    dead = root / "images" / f".tmp-{'a' * 64}-999999999-1"
    live = root / "layers" / f".tmp-{'b' * 64}-{os.getpid()}-1"
    evicted = root / "images" / ".tmp-evict-abc-1"
    blob = root / "blobs" / f".tmp-{'c' * 64}-999999999-1"
    for d in (dead, live, evicted):
        (d / "rootfs").mkdir(parents=True)
    blob.write_bytes(b"partial")
    OciImages(root)  # an agent starting again on the same cache
    assert not dead.exists() and not evicted.exists() and not blob.exists()
    assert live.exists()  # a pull of a live process is left alone


def test_a_cached_private_image_is_not_served_by_digest_without_credentials(
    tmp_path: Path,
) -> None:
    """One tenant's private image, cached on the host, ran for any other tenant that named
    its digest under any registry name (no registry was asked). A digest reference uses the
    cache without a registry only where that registry and repository served it without
    credentials; otherwise the registry is asked, with the caller's credentials."""
    with run_registry(tmp_path / "reg", htpasswd=("bob", "hunter2-pw")) as reg:
        digest = push_image(reg, "private/app", "v1", [BASE])
        images = cache(tmp_path / "c", reg.host)
        owner = RegistryAuth("bob", "hunter2-pw")
        images.prepare(f"{reg.host}/private/app:v1", owner)  # the owner's pull: cached
        for ref in (f"{reg.host}/private/app@{digest}", f"private.invalid/x@{digest}"):
            with pytest.raises(ImagePullError):
                images.prepare(ref)  # another tenant, no credentials
        # The owner, with its credentials, still gets the cached copy by digest.
        assert (images.prepare(f"{reg.host}/private/app@{digest}", owner).rootfs / "a/x").exists()


def test_a_public_image_by_digest_needs_no_registry_once_cached(tmp_path: Path) -> None:
    with run_registry(tmp_path / "reg") as reg:
        digest = push_image(reg, "open/app", "v1", [BASE])
        ref = f"{reg.host}/open/app@{digest}"
        images = cache(tmp_path / "c", reg.host)
        images.prepare(ref)  # served without credentials: public
    # The registry is gone: the cached copy serves that name, and only that name.
    assert (images.prepare(ref).rootfs / "a/x").exists()
    with pytest.raises(ImagePullError):
        images.prepare(f"{reg.host}/other/app@{digest}")
