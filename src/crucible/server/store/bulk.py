"""Bulk execution of prebuilt statements without SQLAlchemy's per-row parameter processing.

For the inputs of a ``.map`` (thousands of rows per request) SQLAlchemy's per-row parameter
handling costs several times the database's own work. :func:`execute_many` compiles a
prebuilt statement once per dialect and hands the driver plain tuples or dicts.

Only for statements whose parameters need no type processing: strings, integers, floats,
booleans, bytes and None (JSON columns must be literal in the statement or go through
SQLAlchemy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Connection, Table
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

__all__ = ["InsertSkipping", "execute_many"]

_Compiled = tuple[str, tuple[str, ...], dict[str, Any], bool]
_compiled: dict[tuple[int, str], _Compiled] = {}


def _compile(stmt: ClauseElement, conn: Connection) -> _Compiled:
    """SQL text, parameter names in order, values of the statement's own literals (e.g.
    ``state='succeeded'``), and whether the driver takes positional parameters."""
    key = (id(stmt), conn.dialect.name)
    found = _compiled.get(key)
    if found is None:
        compiled = cast(SQLCompiler, stmt.compile(dialect=conn.dialect))
        literals = {k: v for k, v in compiled.params.items() if v is not None}
        params = compiled.params
        names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(params)
        found = (str(compiled), names, literals, bool(compiled.positional))
        _compiled[key] = found
    return found


def execute_many(conn: Connection, stmt: ClauseElement, rows: Sequence[Mapping[str, Any]]) -> None:
    """Execute ``stmt`` (a module-level constant) once per row, in one driver call. Every
    parameter the statement names must be in each row, except its literals."""
    if not rows:
        return
    sql, names, literals, positional = _compile(stmt, conn)
    params: list[Any]
    if positional:
        params = [tuple(row[n] if n in row else literals[n] for n in names) for row in rows]
    else:
        params = [{n: row[n] if n in row else literals[n] for n in names} for row in rows]
    conn.exec_driver_sql(sql, params)


class InsertSkipping:
    """``INSERT ... ON CONFLICT DO NOTHING`` into ``table``, built once per dialect (a module
    constant): building the statement at each use costs more than the insert itself on a
    hot path. ``index_elements`` names the unique key the conflict is on (any, if empty)."""

    def __init__(self, table: Table, *index_elements: str) -> None:
        keys = list(index_elements) or None
        self._by_dialect: dict[str, Insert] = {
            "postgresql": pg_insert(table).on_conflict_do_nothing(index_elements=keys),
            "sqlite": sqlite_insert(table).on_conflict_do_nothing(index_elements=keys),
        }

    def on(self, conn: Connection) -> Insert:
        """The statement for ``conn``'s database."""
        return self._by_dialect[conn.dialect.name]
