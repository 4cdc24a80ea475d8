"""docs/pods.md's recipe for an image without Docker, run as written: its registry block
starts Debian's docker-registry, its build block makes an image with umoci and pushes it
with skopeo, and the pod its last block creates (on a real bwrap exchange told that the
registry is plain HTTP) prints the image's greeting. Only the registry's port and the
user's home differ from the page (the page's 127.0.0.1:5000 may be taken here)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sandbox_testlib import SANDBOX_ENV, bwrap_or_skip

from access_testlib import ssh_env

from harness import Exchange, free_port

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "pods.md"
HEADING = "### Your own image, without Docker"
PAGE_REGISTRY = "127.0.0.1:5000"
TOOLS = ("docker-registry", "umoci", "skopeo")


def recipe() -> list[str]:
    """The section's bash blocks, in order."""
    text = PAGE.read_text()
    start = text.index(HEADING)
    end = min(i for i in (text.find("\n## ", start), text.find("\n### ", start + 1)) if i > 0)
    return re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.S)


def test_the_page_still_has_the_recipe() -> None:
    blocks = recipe()
    assert len(blocks) == 3, blocks
    assert "docker-registry serve" in blocks[0]
    assert "skopeo copy" in blocks[1] and f"docker://{PAGE_REGISTRY}/hello:1" in blocks[1]
    assert f"CRUCIBLE_OCI_INSECURE_REGISTRIES={PAGE_REGISTRY}" in blocks[2]


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """The page's first block run with a scratch $HOME and a free port: (host:port, env)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing or not Path("/bin/busybox").exists():
        pytest.skip(f"needs {', '.join(TOOLS)} and busybox-static (scripts/setup dev)")
    host = f"127.0.0.1:{free_port()}"
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    script = tmp_path / "registry.sh"
    script.write_text(recipe()[0].replace(PAGE_REGISTRY, host))
    # Its own session: the registry the block leaves in the background goes with the group.
    proc = subprocess.Popen(["bash", "-e", str(script)], env=env, start_new_session=True)
    try:
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://{host}/v2/", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (home / "registry" / "log").read_text()
                time.sleep(0.1)
        yield host, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)


def test_the_recipe_builds_pushes_and_runs_an_image(
    registry: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    bwrap_or_skip()
    host, env = registry
    work = tmp_path / "work"
    work.mkdir()
    build = subprocess.run(
        ["bash", "-e", "-c", recipe()[1].replace(PAGE_REGISTRY, host)],
        cwd=work, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    with urllib.request.urlopen(f"http://{host}/v2/hello/tags/list", timeout=5) as r:
        assert b'"1"' in r.read()

    ex = Exchange(
        tmp_path / "exchange",
        f"sqlite:///{tmp_path / 'store.db'}",
        **SANDBOX_ENV,
        CRUCIBLE_OCI_INSECURE_REGISTRIES=host,
    )
    try:
        ex.start_server()
        ex.start_agent("host-a")
        cli_env = ssh_env(ex, ex.tenant_token(f"img-{uuid.uuid4().hex[:6]}"), tmp_path / "cli")
        commands = [
            line.split("#")[0].strip()
            for line in recipe()[2].splitlines()
            if line.startswith("crucible pod")
        ]
        assert [c.split()[2] for c in commands] == ["create", "logs"], commands

        def crucible(command: str) -> subprocess.CompletedProcess[str]:
            argv = shlex.split(command.replace(PAGE_REGISTRY, host))
            return subprocess.run(
                [sys.executable, "-m", "crucible.cli.main", *argv[1:]],
                env=cli_env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip

        created = crucible(commands[0])
        assert created.returncode == 0, created.stdout + created.stderr
        deadline = time.monotonic() + 180
        while True:
            logs = crucible(commands[1])
            if "hello from my image" in logs.stdout:
                break
            assert time.monotonic() < deadline, logs.stdout + logs.stderr
            time.sleep(1)
    finally:
        ex.close()
