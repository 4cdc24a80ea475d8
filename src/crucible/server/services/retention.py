"""Retention: old calls, log lines and metered intervals are deleted, stopped apps nothing
kept names any more go with their functions, and blobs nothing references any more are
collected, in bounded batches (the scheduler's housekeeping runs them, see
scheduler/loop.py).

What is kept: every ledger entry (balances, statements and host earnings are sums of
entries). A metered interval's energy and emissions are copied onto its ledger charge before
the interval goes, so statements read the same after pruning. Queued and running calls are
never pruned, nor is anything a kept row still references.

A stopped app (an ephemeral run, or a standalone app) goes once its calls, log lines and
metered intervals have gone: its functions and their stopped containers are deleted, so its
code bundle and image files are no longer referenced and blob collection takes them. A
deployment's versions are kept (a rollback can make any of them current again), and so are a
pod's app and a fine-tune's. The app's own row stays when a container of it ever ran: its
ledger charges name it, and the ``apps`` statement reads its name there.

A blob is collected when no call, call item, volume version (its manifest or a chunk a
manifest lists), function code bundle or image file references it and every grant of it
(an upload, or a HEAD: the SDK checks a blob before it uses it) is older than the grace:
an upload in flight is never lost.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    bindparam,
    delete,
    exists,
    func,
    select,
    update,
)

from crucible.core.market import CPU
from crucible.protocol.common import TERMINAL_STATES
from crucible.protocol.volumes import Manifest
from crucible.server.blobs import BlobStore
from crucible.server.services.function_specs import SPECS, unparsed_blob_refs
from crucible.server.store.bulk import execute_many
from crucible.server.store.tables import (
    apps,
    blobs,
    call_attempts,
    call_inbox,
    call_items,
    calls,
    containers,
    fine_tunes,
    functions,
    ledger_entries,
    log_lines,
    meter_intervals,
    pods,
    secrets,
    volume_versions,
    volumes,
)

__all__ = [
    "Pruned",
    "RetentionPolicy",
    "collect_blobs",
    "prune_apps",
    "prune_calls",
    "prune_intervals",
    "prune_logs",
]

_DAY_MS = 86_400_000


@dataclass(frozen=True)
class RetentionPolicy:
    """What is old enough to go, as cut-off times (None: that kind is kept forever)."""

    calls_before_ms: int | None
    logs_before_ms: int | None
    meter_before_ms: int | None
    blobs_before_ms: int | None
    batch: int

    @property
    def apps_before_ms(self) -> int | None:
        """Stopped apps go after the longest of the calls', logs' and intervals' windows
        (None: one of them is kept forever, and so are the apps they name): by then what
        they named has gone too, so a pass does not look at the same kept apps again."""
        cuts = (self.calls_before_ms, self.logs_before_ms, self.meter_before_ms)
        return None if None in cuts else min(c for c in cuts if c is not None)

    @classmethod
    def at(
        cls,
        now_ms: int,
        *,
        calls_days: float,
        logs_days: float,
        meter_days: float,
        blob_grace_hours: float,
        batch: int,
    ) -> RetentionPolicy:
        def cut(days: float) -> int | None:
            return now_ms - int(days * _DAY_MS) if days > 0 else None

        return cls(
            calls_before_ms=cut(calls_days),
            logs_before_ms=cut(logs_days),
            meter_before_ms=cut(meter_days),
            blobs_before_ms=cut(blob_grace_hours / 24),
            batch=max(1, batch),
        )


@dataclass
class Pruned:
    """What one or more batches deleted."""

    calls: int = 0
    items: int = 0
    logs: int = 0
    intervals: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    apps: int = 0  # apps whose functions went (their rows may stay: see prune_apps)
    functions: int = 0
    containers: int = 0
    # Kinds whose last batch was full (more may be waiting).
    more: set[str] = field(default_factory=set)

    def add(self, other: Pruned) -> None:
        self.calls += other.calls
        self.items += other.items
        self.logs += other.logs
        self.intervals += other.intervals
        self.blobs += other.blobs
        self.blob_bytes += other.blob_bytes
        self.apps += other.apps
        self.functions += other.functions
        self.containers += other.containers

    @property
    def total(self) -> int:
        return (
            self.calls
            + self.items
            + self.logs
            + self.intervals
            + self.blobs
            + self.apps
            + self.functions
            + self.containers
        )


def prune_calls(conn: Connection, before_ms: int, batch: int) -> Pruned:
    """Delete up to ``batch`` finished calls that finished before ``before_ms``, with their
    items, inbox and earlier attempts."""
    ids = list(
        conn.execute(
            select(calls.c.id)
            .where(calls.c.finished_ms < before_ms, calls.c.state.in_(TERMINAL_STATES))
            .order_by(calls.c.finished_ms)
            .limit(batch)
        ).scalars()
    )
    out = Pruned()
    if not ids:
        return out
    out.items = conn.execute(delete(call_items).where(call_items.c.call_id.in_(ids))).rowcount
    conn.execute(delete(call_inbox).where(call_inbox.c.call_id.in_(ids)))
    conn.execute(delete(call_attempts).where(call_attempts.c.call_id.in_(ids)))
    out.calls = conn.execute(delete(calls).where(calls.c.id.in_(ids))).rowcount
    if len(ids) == batch:
        out.more.add("calls")
    return out


def prune_logs(conn: Connection, before_ms: int, batch: int) -> Pruned:
    """Delete up to ``batch`` log lines written before ``before_ms``. Lines are appended in
    time order, so the oldest ids are looked at (the primary key; no scan of the table)."""
    oldest = conn.execute(
        select(log_lines.c.id, log_lines.c.ts_ms).order_by(log_lines.c.id).limit(batch)
    ).all()
    ids = [r.id for r in oldest if r.ts_ms < before_ms]
    out = Pruned()
    if ids:
        out.logs = conn.execute(delete(log_lines).where(log_lines.c.id.in_(ids))).rowcount
        if len(oldest) == batch and oldest[-1].ts_ms < before_ms:
            out.more.add("logs")
    return out


_KEEP_ENERGY = (
    update(ledger_entries)
    .where(ledger_entries.c.key == bindparam("b_key"))
    .values(energy_mwh=bindparam("b_energy"), carbon_mg=bindparam("b_carbon"))
)


def prune_intervals(conn: Connection, before_ms: int, batch: int) -> Pruned:
    """Delete up to ``batch`` metered intervals that ended before ``before_ms``, after
    copying each one's energy and emissions onto its ledger charge (key
    ``ct:<container>:<start>``, see billing.service)."""
    rows = conn.execute(
        select(
            meter_intervals.c.container_id,
            meter_intervals.c.start_ms,
            meter_intervals.c.energy_mwh,
            meter_intervals.c.carbon_mg,
        )
        .where(meter_intervals.c.end_ms < before_ms)
        .order_by(meter_intervals.c.end_ms)
        .limit(batch)
    ).all()
    out = Pruned()
    if not rows:
        return out
    execute_many(
        conn,
        _KEEP_ENERGY,
        [
            {
                "b_key": f"ct:{r.container_id}:{r.start_ms}",
                "b_energy": int(r.energy_mwh),
                "b_carbon": int(r.carbon_mg),
            }
            for r in rows
        ],
    )
    for container_id in {r.container_id for r in rows}:
        starts = [r.start_ms for r in rows if r.container_id == container_id]
        out.intervals += conn.execute(
            delete(meter_intervals).where(
                meter_intervals.c.container_id == container_id,
                meter_intervals.c.start_ms.in_(starts),
            )
        ).rowcount
    if len(rows) == batch:
        out.more.add("intervals")
    return out


# A charge keeps its container's device type and tier once the container goes.
_KEEP_LEASE_KIND = (
    update(ledger_entries)
    .where(ledger_entries.c.meter == bindparam("b_meter"), ledger_entries.c.kind == "charge")
    .values(device_type=bindparam("b_type"), tier=bindparam("b_tier"))
)


def prune_apps(conn: Connection, before_ms: int, batch: int) -> Pruned:
    """Delete the functions, and their stopped containers, of up to ``batch`` apps stopped
    before ``before_ms`` that nothing kept names: no call of theirs, log line or metered
    interval is left, and no container of theirs is live. Not a deployment's versions (a
    rollback can reach each of them), a pod's app or a fine-tune's. The app's row goes too
    unless a container of it ran: ledger charges name such an app, and the ``apps``
    statement reads its name from the row, so it stays (without functions, it is not looked
    at again)."""
    candidates = list(
        conn.execute(
            select(apps.c.id)
            .where(
                apps.c.state == "stopped",
                apps.c.deployment_id.is_(None),
                apps.c.stopped_ms < before_ms,
                exists().where(functions.c.app_id == apps.c.id),
                ~exists().where(pods.c.app_id == apps.c.id),
                ~exists().where(fine_tunes.c.app_id == apps.c.id),
            )
            .order_by(apps.c.stopped_ms)
            .limit(batch)
        ).scalars()
    )
    out = Pruned()
    if not candidates:
        return out
    app_of: dict[str, str] = {
        r.id: r.app_id
        for r in conn.execute(
            select(functions.c.id, functions.c.app_id).where(functions.c.app_id.in_(candidates))
        )
    }
    held = conn.execute(
        select(
            containers.c.id,
            containers.c.function_id,
            containers.c.state,
            containers.c.gpu_model,
            containers.c.tier,
        ).where(containers.c.function_id.in_(list(app_of)))
    ).all()
    busy = {app_of[f] for f in _distinct(conn, calls.c.function_id, list(app_of))}
    busy.update(_distinct(conn, log_lines.c.app_id, candidates))
    busy.update(app_of[r.function_id] for r in held if r.state != "stopped")
    metered = set(_distinct(conn, meter_intervals.c.container_id, [r.id for r in held]))
    busy.update(app_of[r.function_id] for r in held if r.id in metered)
    gone = [a for a in candidates if a not in busy]
    if gone:
        fids = [f for f, a in app_of.items() if a not in busy]
        ran = {app_of[r.function_id] for r in held}
        # Host earnings per lease name each container's device type and tier.
        kinds = [
            {"b_meter": r.id, "b_type": r.gpu_model or CPU, "b_tier": r.tier}
            for r in held
            if app_of[r.function_id] not in busy
        ]
        if kinds:
            execute_many(conn, _KEEP_LEASE_KIND, kinds)
        out.containers = conn.execute(
            delete(containers).where(containers.c.function_id.in_(fids))
        ).rowcount
        out.functions = conn.execute(delete(functions).where(functions.c.id.in_(fids))).rowcount
        # Secret.from_dict secrets go when their app stops (housekeeping): none should be left.
        conn.execute(delete(secrets).where(secrets.c.app_id.in_(gone)))
        conn.execute(delete(apps).where(apps.c.id.in_([a for a in gone if a not in ran])))
        out.apps = len(gone)
        # A full batch of apps still named by kept rows waits for the next housekeeping.
        if len(candidates) == batch:
            out.more.add("apps")
    return out


def _distinct(conn: Connection, column: ColumnElement[Any], values: list[str]) -> list[str]:
    """The values among ``values`` that ``column`` holds (in chunks: a long IN list)."""
    found: list[str] = []
    for i in range(0, len(values), 500):
        chunk = values[i : i + 500]
        found += conn.execute(select(column).where(column.in_(chunk)).distinct()).scalars()
    return found


def collect_blobs(
    engine: Engine,
    store: BlobStore,
    before_ms: int,
    batch: int,
    after: str = "",
    *,
    fence: Callable[[Connection], None] | None = None,
) -> tuple[Pruned, str]:
    """Collect unreferenced blobs among up to ``batch`` blob hashes after ``after`` (in hash
    order) whose every grant is older than ``before_ms``. Returns what was deleted and the
    hash to continue after ('' once the end was reached: start again from the beginning).
    ``fence`` runs first in every deleting transaction (the scheduler leader's epoch check,
    server/leadership.py)."""
    with engine.connect() as conn:
        found = conn.execute(
            select(blobs.c.sha256, func.max(blobs.c.size).label("size"))
            .where(blobs.c.sha256 > after)
            .group_by(blobs.c.sha256)
            .having(func.max(blobs.c.created_ms) < before_ms)
            .order_by(blobs.c.sha256)
            .limit(batch)
        ).all()
        if not found:
            return Pruned(), ""
        cursor = found[-1].sha256 if len(found) == batch else ""
        candidates = {r.sha256: int(r.size) for r in found}
        for sha in _referenced(conn, store, list(candidates)):
            candidates.pop(sha, None)
    out = Pruned()
    for sha, size in candidates.items():
        with engine.begin() as conn:
            if fence is not None:
                fence(conn)
            # Only grants still old enough go: one renewed meanwhile keeps the blob.
            conn.execute(delete(blobs).where(blobs.c.sha256 == sha, blobs.c.created_ms < before_ms))
            if conn.execute(select(blobs.c.sha256).where(blobs.c.sha256 == sha)).first():
                continue
        store.delete(sha)  # after the commit: a failure here leaves a file and no grant
        out.blobs += 1
        out.blob_bytes += size
    return out, cursor


def _referenced(conn: Connection, store: BlobStore, shas: list[str]) -> set[str]:
    """Which of ``shas`` something kept still references."""
    found: set[str] = set()
    for column in (calls.c.input_ref, calls.c.output_ref, call_items.c.ref):
        found.update(conn.execute(select(column).where(column.in_(shas)).distinct()).scalars())
    for column in (volumes.c.manifest_ref, volume_versions.c.manifest_ref):
        found.update(conn.execute(select(column).where(column.in_(shas)).distinct()).scalars())
    holders = list(
        conn.execute(
            select(blobs.c.account_id).where(blobs.c.sha256.in_(shas)).distinct()
        ).scalars()
    )
    if not holders:
        return found
    wanted = set(shas)
    # Code bundles and image files are named in the function's spec.
    revs = conn.execute(
        select(functions.c.id, functions.c.spec_rev).where(functions.c.account_id.in_(holders))
    ).all()
    specs = SPECS.get_many(conn, {r.id: r.spec_rev for r in revs})
    for spec in specs.values():
        found.update(wanted.intersection(spec.blob_refs))
    unread = [r.id for r in revs if r.id not in specs]  # specs this version cannot read
    if unread:
        found.update(wanted.intersection(unparsed_blob_refs(conn, unread)))
    # Volume chunks are listed in the manifests of the holders' volume versions.
    manifests = conn.execute(
        select(volume_versions.c.manifest_ref)
        .join(volumes, volumes.c.id == volume_versions.c.volume_id)
        .where(volumes.c.account_id.in_(holders))
        .union(
            select(volumes.c.manifest_ref).where(
                volumes.c.account_id.in_(holders), volumes.c.manifest_ref.is_not(None)
            )
        )
    ).scalars()
    for ref in set(manifests):
        if ref is None or not store.exists(ref):
            continue
        for entry in Manifest.model_validate_json(store.get(ref)).files.values():
            found.update(wanted.intersection(entry.chunks))
    return found
