"""Images end to end on the bwrap runtime: built once per host with uv, shipped files and
sources, environment, preloads and enter hooks, and a failed build reported with the
installer's message."""

from __future__ import annotations

from typing import Any

import app_images as a
import pytest

import crucible

from harness import Exchange


def built_images(ex: Exchange) -> list[str]:
    root = ex.root / "agent-host-a" / "agent" / "images"
    return sorted(d.name for d in root.iterdir() if (d / "ready.json").exists())


def test_image_packages_files_sources_env_and_hooks(sandboxed: Exchange, tenant: Any) -> None:
    with a.app.run(client=tenant):
        first = a.inspect_image.remote()
        assert first["six"] == "1.16.0" and "/images/" in first["six_file"]
        assert first["helper"] == 42 and "/images/" in first["helper_file"]
        assert first["data"] == "shipped with the image"
        assert first["greeting"] == "hello"
        # The first container of this code imports it itself: both hooks run there.
        assert [h.split(":")[0] for h in first["hooks"]] == ["snapshot", "enter"]
        # The next one forks from the zygote, which imported the module (it has a snapshot
        # hook) and ran that hook before forking: only the plain hook runs in the container.
        later = a.hooks_seen.remote()
        [snapshot, enter] = later["hooks"]
        assert snapshot.startswith("snapshot:") and enter == "enter", later
        assert snapshot != f"snapshot:{later['pid']}", later
        assert a.greeting.remote() == "hi"
    # Two functions, two run-time settings, one build step list: one image on disk.
    assert built_images(sandboxed) == [a.image.spec().build_hash()]


def test_failed_build_reports_the_installers_message(tenant: Any) -> None:
    with (
        a.app.run(client=tenant),
        pytest.raises(crucible.ImageBuildError, match="crucible-no-such-package-zz"),
    ):
        a.never_runs.remote()


def test_a_process_runtime_host_refuses_images_clearly(exchange: Exchange, builder: Any) -> None:
    """The default runtime builds no images: the call says so instead of waiting forever."""
    with (
        a.app.run(client=builder),
        pytest.raises(crucible.ImageBuildError, match="--runtime bwrap"),
    ):
        a.inspect_image.remote()
