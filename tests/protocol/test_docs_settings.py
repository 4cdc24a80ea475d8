"""The operators' settings table in docs/ is generated from the one settings table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_settings_table_in_the_docs_is_current() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "gen_settings.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, (
        "docs/operators.md is stale: run `python docs/gen_settings.py`\n" + out.stdout + out.stderr
    )
