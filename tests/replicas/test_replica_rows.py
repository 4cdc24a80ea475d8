"""A server on PostgreSQL counts only the other replicas: its own start-up check-in (the row
that other servers starting at once find) is its own replica row, not a second replica. A
lone server logged "1 other replica(s) on this store" for a lease, believing it had company
(no web relay, wake-ups published), and each start left a row behind (ops2 probe)."""

from __future__ import annotations

from pathlib import Path

import psycopg

from harness import server_output


def _replica_rows(database_url: str) -> list[str]:
    url = database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM replicas ORDER BY id")]


def test_a_lone_server_counts_no_other_replica_and_leaves_no_row(
    postgres_url: str, tmp_path: Path
) -> None:
    seen: list[list[str]] = []  # the replica rows when it said how many others it found

    def look() -> None:
        seen.append(_replica_rows(postgres_url))

    for start in range(2):  # a restart too: the first start left nothing behind
        out = server_output(
            tmp_path / "home",
            "other replica(s) on this store",
            env={"CRUCIBLE_DATABASE_URL": postgres_url},
            then=look,
        )
        counted = [line for line in out.splitlines() if "other replica(s) on this store" in line]
        assert counted and "0 other replica(s)" in counted[0], out
        [row] = seen[start]
        assert row.startswith("r-"), row
        # A graceful stop takes its row with it.
        assert _replica_rows(postgres_url) == []
