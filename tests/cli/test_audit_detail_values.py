"""`crucible audit` shows each entry's detail as ``key=value`` pairs; a value a tenant chose
that holds a separator is quoted, so that it cannot read as fields of its own (a token named
"ci, scope=admin" showed as ``name=ci, scope=admin, scope=user``)."""

from __future__ import annotations

from crucible.cli.audit import _value


def test_values_that_could_read_as_fields_are_quoted() -> None:
    assert _value("ci, scope=admin") == '"ci, scope=admin"'
    assert _value('say "hi"') == '"say \\"hi\\""'
    assert _value("") == '""'
    assert _value("rack-1") == "rack-1"
    assert _value(True) == "True" and _value(5_000_000) == "5000000"
