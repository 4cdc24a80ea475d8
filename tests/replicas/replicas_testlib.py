"""Replicas for tests: more `crucible server` processes on an exchange's PostgreSQL store
(crucible.testing's LocalExchange.start_replica and start_haproxy), and reads of the store.

Every replica of a test shares the first one's home (its secret, keyring and blob directory):
on one machine that is what CRUCIBLE_SECRET, CRUCIBLE_SECRETS_KEYS and a shared blob store
are in production (docs/operators.md, "Running replicas")."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from crucible.testing import Replica
from crucible.testing import start_haproxy as _start_haproxy

from harness import Exchange

__all__ = ["Replica", "call_attempts", "leadership", "start_haproxy", "start_replica"]


def start_replica(ex: Exchange, index: int) -> Replica:
    return ex.start_replica(index)


def start_haproxy(root: Path, ports: list[int]) -> tuple[subprocess.Popen[bytes], str]:
    """haproxy over the replicas; the test is skipped where haproxy is not installed."""
    try:
        return _start_haproxy(root, ports)
    except FileNotFoundError as exc:
        pytest.skip(f"{exc}; scripts/setup dev installs it when run as root")


def leadership(database_url: str) -> dict[str, Any] | None:
    """The scheduler lease row, read straight from the store."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT epoch, holder, expires_ms FROM leadership WHERE name = 'scheduler'"
        ).fetchone()
    if row is None:
        return None
    return {"epoch": row[0], "holder": row[1], "expires_ms": row[2]}


def call_attempts(database_url: str) -> dict[str, int]:
    """Attempts per call: a call that ran twice shows 2."""
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return {r[0]: r[1] for r in conn.execute("SELECT id, attempts FROM calls")}
