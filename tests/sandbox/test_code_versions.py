"""Each container runs its own version of the code. A zygote warms the code it ran before
(imports the builder's module, so later containers start with it done); a container forked
from it for a changed version of that code (a redeploy, `crucible serve`'s reload, the next
`crucible run`) imported the old module from the zygote's ``sys.modules``, and its helper
modules with it: the edited code never ran."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

from crucible.cli.run import import_app_file

from harness import Exchange

_APP = """
import crucible
import verhelp

app = crucible.App("versions")
MODULE = {version!r}


@app.function(timeout=60)
def which() -> str:
    return f"module {{MODULE}} helper {{verhelp.VALUE}}"
"""


def test_each_version_of_the_code_runs_its_own_modules(
    sandboxed: Exchange, tenant: Any, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    # Twice the same code first: the second run's container is forked from a zygote that
    # imported it (warm); then the edited code, twice.
    for version in ("A", "A", "B", "B"):
        (project / "verhelp.py").write_text(f"VALUE = {version!r}\n")
        (project / "vermod.py").write_text(textwrap.dedent(_APP.format(version=version)))
        for name in ("vermod", "verhelp"):
            sys.modules.pop(name, None)
        module = import_app_file(project / "vermod.py")
        with module.app.run(client=tenant):
            assert module.which.remote() == f"module {version} helper {version}"
    for name in ("vermod", "verhelp"):
        sys.modules.pop(name, None)
