"""Help as peers give it: `-h` as well as `--help`, a bare group lists its commands (it said
"Missing command"), and no help text is cut with "…" in 80 columns."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from crucible.cli.main import app

from cli_testlib import crucible


def _commands(cmd: Any, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, sub in getattr(cmd, "commands", {}).items():
        if not sub.hidden:
            yield from _commands(sub, [*path, name])


def test_no_help_is_cut_in_80_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    runner = CliRunner()
    cut = []
    paths = list(_commands(typer.main.get_command(app), []))
    assert len(paths) > 100  # every command, groups included
    for path in paths:
        out = runner.invoke(app, [*path, "--help"], terminal_width=80)
        assert out.exit_code == 0, (path, out.output)
        cut += [
            f"{' '.join(path)}: {line.strip()}" for line in out.output.splitlines() if "…" in line
        ]
    assert not cut, "\n".join(cut)


def test_h_is_help_and_a_bare_group_lists_its_commands() -> None:
    env = {"CRUCIBLE_HOME": "/nonexistent-crucible-home"}
    out = crucible("calls", "-h", env=env)
    assert out.returncode == 0 and " calls [OPTIONS]" in out.stdout, out.stdout + out.stderr
    for group, command in (("pod", "create"), ("token", "revoke"), ("host", "drain")):
        out = crucible(group, env=env)
        assert "Missing command" not in out.stdout + out.stderr, out.stderr
        assert f" {group} [OPTIONS] COMMAND" in out.stdout and command in out.stdout, out.stdout
    # A command's own options pass through `exec` (`df -h`): only --help is the CLI's there.
    out = crucible("pod", "exec", "--help", env=env)
    assert out.returncode == 0 and " pod exec [OPTIONS]" in out.stdout
