"""Which commands start an exchange, and where a saved token goes.

- A command that only looks at what an exchange holds (`crucible calls`, `bill`, `hosts`,
  `token list`...) started a control plane and an agent in the background and left them
  running, unannounced; now it says how to start one.
- With CRUCIBLE_SERVER_URL set to another server and no CRUCIBLE_TOKEN, the CLI and the SDK
  sent the local exchange's admin token (from client.json) to that server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crucible.sdk._config import read_client_config
from crucible.settings import load_settings

from harness import free_port

ROOT = Path(__file__).resolve().parents[2]


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    clean.update(CRUCIBLE_HOME=str(home), CRUCIBLE_PORT=str(free_port()), **env)
    return subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=clean,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_read_only_commands_do_not_start_an_exchange(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for args in (["calls"], ["bill"], ["hosts"], ["token", "list"], ["apps"]):
        out = _cli(home, *args)
        assert out.returncode == 1, (args, out.stdout, out.stderr)
        assert "no exchange is running" in out.stderr and "crucible up" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
    # Nothing was started: no lock, no log, no store.
    assert not (home / "up.lock").exists() and not (home / "logs").exists()


def test_a_saved_token_goes_only_to_its_own_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    saved = {"server_url": "http://127.0.0.1:8745", "token": "cru_local-admin"}
    (home / "client.json").write_text(json.dumps(saved))
    env = {"CRUCIBLE_HOME": str(home)}

    def config(**extra: str) -> tuple[str, str] | None:
        c = read_client_config(load_settings(environ={**env, **extra}))
        return None if c is None else (c.server_url, c.token)

    assert config() == ("http://127.0.0.1:8745", "cru_local-admin")
    assert config(CRUCIBLE_SERVER_URL="http://127.0.0.1:8745/") == (
        "http://127.0.0.1:8745/",
        "cru_local-admin",
    )
    assert config(CRUCIBLE_SERVER_URL="http://localhost:8745") == (
        "http://localhost:8745",
        "cru_local-admin",
    )  # the same machine, named another way
    assert config(CRUCIBLE_SERVER_URL="http://127.0.0.1:9999") is None  # another port
    assert config(CRUCIBLE_SERVER_URL="http://exchange.example.test") is None
    assert config(
        CRUCIBLE_SERVER_URL="http://exchange.example.test", CRUCIBLE_TOKEN="cru_mine"
    ) == ("http://exchange.example.test", "cru_mine")

    out = _cli(home, "calls", CRUCIBLE_SERVER_URL=f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 1 and "set CRUCIBLE_TOKEN" in out.stderr, out.stderr


def test_a_client_json_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    """A client.json cut short (a full disk) or edited by hand crashed every command with a
    JSONDecodeError or an AttributeError that did not name the file."""
    home = tmp_path / "home"
    home.mkdir()
    for text in ('{"server_url": "http://127.0.0.1:19310", "tok', "", "[]", '{"token": 5}'):
        (home / "client.json").write_text(text)
        out = _cli(home, "calls")
        assert out.returncode == 1, (text, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr
        said = " ".join(out.stderr.split())
        assert "client.json" in said and "delete it" in said, out.stderr


def test_version_is_printed_without_an_exchange(tmp_path: Path) -> None:
    from crucible.agent.main import agent_version

    done = _cli(tmp_path / "home", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"crucible {agent_version()}"
    assert not (tmp_path / "home").exists()  # nothing started, nothing written
