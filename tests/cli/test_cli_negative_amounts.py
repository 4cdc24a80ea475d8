"""A negative amount given as an argument is an amount, refused with why (`credits grant ACCT
-5`, `credits cap ACCT -1`), not "No such option: -5". Through the real CLI and server."""

from __future__ import annotations

from pathlib import Path

from cli_testlib import cli, refused
from harness import Exchange


def test_negative_amounts_are_refused_as_amounts(tmp_path: Path) -> None:
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}")
    ex.start_server()
    try:
        admin = (ex.home / "admin-token").read_text().strip()
        ex.new_account("acct1")
        refused(
            cli(ex, admin, "credits", "grant", "acct1", "-5"),
            "amount must be dollars in (0, 1e9]",
            "cannot take any",
        )
        refused(
            cli(ex, admin, "credits", "cap", "acct1", "-1"),
            "the daily cap must be dollars in [0, 1e9]",
            "'none'",
        )
        for args in (["grant", "acct1", "5"], ["cap", "acct1", "2.5"]):
            out = cli(ex, admin, "credits", *args)
            assert out.returncode == 0, out.stdout + out.stderr
    finally:
        ex.close()
