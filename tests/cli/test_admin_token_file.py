"""`crucible server` on an empty store writes the new admin token beside any existing one,
never over it (it may be the only copy of another store's token), readable by its owner
only from the start."""

from __future__ import annotations

import stat
from pathlib import Path

from crucible.cli.serve import _bootstrap_admin
from crucible.settings import load_settings


def test_a_second_empty_store_does_not_overwrite_the_admin_token(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    first = load_settings(home=str(home), database_url=f"sqlite:///{tmp_path / 'a.db'}")
    _bootstrap_admin(first)
    token_a = (home / "admin-token").read_text()
    assert token_a.startswith("cru_")
    assert stat.S_IMODE((home / "admin-token").stat().st_mode) == 0o600
    _bootstrap_admin(first)  # the store has its account now: nothing is written
    assert sorted(p.name for p in home.iterdir() if p.name.startswith("admin")) == ["admin-token"]

    second = load_settings(home=str(home), database_url=f"sqlite:///{tmp_path / 'b.db'}")
    _bootstrap_admin(second)
    assert (home / "admin-token").read_text() == token_a
    token_b = (home / "admin-token.2").read_text()
    assert token_b.startswith("cru_") and token_b != token_a
    assert stat.S_IMODE((home / "admin-token.2").stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert f"its admin token is in {home / 'admin-token.2'}" in out and "was kept" in out
