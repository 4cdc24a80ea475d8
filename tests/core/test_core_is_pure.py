"""crucible.core holds the pure cores: it must not reach the server, the store or the web.

Walks every module of the package with ``ast`` (no import needed, so a forbidden import
that would only fail at run time is still caught) and checks each ``import``/``from``
statement, including relative ones and ones inside functions or ``TYPE_CHECKING`` blocks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import crucible.core

CORE = Path(crucible.core.__file__).parent

# Top-level packages a pure core may not import: the control plane, its store and web stack,
# and anything that does I/O on its own (network, processes, the agent and the worker).
FORBIDDEN = (
    "crucible.server",
    "crucible.agent",
    "crucible.worker",
    "crucible.sdk",
    "crucible.cli",
    "crucible.sim",
    "sqlalchemy",
    "fastapi",
    "starlette",
    "httpx",
    "asyncio",
    "subprocess",
    "socket",
    "urllib",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) for every import in a module's source."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from crucible import server` names the package in the alias.
            found.extend((node.lineno, f"{name}.{alias.name}") for alias in node.names)
    return found


def _file_imports(path: Path) -> list[tuple[int, str]]:
    return _imports(path.read_text(), _module_name(path), path.name == "__init__.py")


def _forbidden(name: str) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)


def test_core_package_has_the_pure_cores() -> None:
    modules = {_module_name(p) for p in CORE.rglob("*.py")}
    for expected in (
        "crucible.core.scheduling",
        "crucible.core.autoscaler",
        "crucible.core.placement",
        "crucible.core.market.book",
        "crucible.core.metering",
        "crucible.core.ledger",
        "crucible.core.token_pricing",
    ):
        assert expected in modules


def test_core_imports_nothing_impure() -> None:
    offences = [
        f"{path.relative_to(CORE.parent.parent)}:{line}: imports {name}"
        for path in sorted(CORE.rglob("*.py"))
        for line, name in _file_imports(path)
        if _forbidden(name)
    ]
    assert offences == [], "crucible.core must stay pure:\n" + "\n".join(offences)


def test_the_checker_catches_every_form_of_a_forbidden_import() -> None:
    source = (
        "import sqlalchemy\n"
        "from crucible import server\n"
        "from ...server import state\n"
        "def f():\n"
        "    from crucible.server.store.tables import hosts\n"
        "from crucible.errors import ConflictError\n"
        "from . import rules\n"
    )
    found = _imports(source, "crucible.core.market.book", is_package=False)
    bad = sorted({line for line, name in found if _forbidden(name)})
    assert bad == [1, 2, 3, 5]
    assert not _forbidden("crucible.serverless")
