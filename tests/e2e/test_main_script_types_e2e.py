"""`python app.py` (docs/builders.md's plain-Python flow): the script's own exception and
result classes come back as themselves. The containers import the script under its file's
name, so they came back as a second copy of that module: `except AppError` did not catch,
and isinstance() was False."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from harness import Exchange

_SCRIPT = """
import crucible

app = crucible.App("main-types")


class AppError(Exception):
    pass


class Result:
    def __init__(self, v):
        self.v = v


@app.function()
def f(x):
    if x < 0:
        raise AppError("negative")
    return Result(x)


if __name__ == "__main__":
    with app.run():
        try:
            f.remote(-1)
        except AppError as e:
            print("caught AppError:", e)
        r = f.remote(4)
        print("isinstance:", isinstance(r, Result), r.v)
"""


def test_a_scripts_own_classes_come_back_as_themselves(exchange: Exchange, tmp_path: Path) -> None:
    script = tmp_path / "mainexc.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    env = {
        **exchange.process_env(tmp_path / "home"),
        "CRUCIBLE_SERVER_URL": exchange.url,
        "CRUCIBLE_TOKEN": exchange.owner_token("scripter"),
    }
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "caught AppError: negative" in out.stdout, out.stdout + out.stderr
    assert "isinstance: True 4" in out.stdout, out.stdout
