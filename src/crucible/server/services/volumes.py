"""Volumes: create, list, read manifests, commit, history, delete; storage metered per
GiB-month through the ledger.

A commit is one transaction: it checks every chunk it names is a blob of the account, applies
its changes to the *latest* manifest (files that others changed since the committer's base
and that this commit does not name are kept; for a file both changed, the last commit wins),
checks the account's quota, stores the new manifest as a blob, and moves the volume to the new
version. A commit that fails changes nothing.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from crucible.core.ledger import PLATFORM_FEES, EntryKind, Posting, renter_account
from crucible.core.metering import GIB, storage_cost
from crucible.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
)
from crucible.protocol.ids import new_id
from crucible.protocol.volumes import (
    FileEntry,
    Manifest,
    VolumeCommit,
    VolumeInfo,
    VolumeVersion,
)
from crucible.server.auth import Principal
from crucible.server.billing.entries import EntryContext, post_entry
from crucible.server.blobs import BlobStore
from crucible.server.services.blobs import grant_blob
from crucible.server.store.bulk import InsertSkipping
from crucible.server.store.locks import lock_row
from crucible.server.store.tables import blobs, volume_versions, volumes

__all__ = [
    "commit",
    "delete_volume",
    "get_volume",
    "history",
    "list_volumes",
    "manifest",
    "meter_volumes",
    "volume_row",
]


def _account(principal: Principal) -> str:
    if principal.scope == "host":
        raise PermissionDeniedError("a host token cannot use volumes")
    return principal.account_id


def _info(row: Any) -> VolumeInfo:
    return VolumeInfo(
        name=row.name,
        version=row.version,
        files=row.files,
        size_bytes=row.size_bytes,
        created_ms=row.created_ms,
        updated_ms=row.updated_ms,
    )


_INSERT_VOLUME = InsertSkipping(volumes, "account_id", "name")


def volume_row(
    conn: Connection, principal: Principal, name: str, *, create: bool = False, now_ms: int = 0
) -> Any:
    account = _account(principal)
    where = (volumes.c.account_id == account) & (volumes.c.name == name)
    row = conn.execute(select(volumes).where(where)).first()
    if row is None and create:
        # A create of the same name at once may insert it first: then this inserts nothing
        # and uses its row (it answered 500 on PostgreSQL).
        conn.execute(
            _INSERT_VOLUME.on(conn).values(
                id=new_id("vo"),
                account_id=account,
                name=name,
                version=0,
                manifest_ref=None,
                files=0,
                size_bytes=0,
                created_ms=now_ms,
                updated_ms=now_ms,
                metered_until_ms=now_ms,
            )
        )
        row = conn.execute(select(volumes).where(where)).first()
    if row is None:
        raise NotFoundError(
            f"volume {name!r} not found; create it with `crucible volume create {name}` or "
            f"crucible.Volume.from_name({name!r}, create_if_missing=True)"
        )
    return row


def get_volume(
    conn: Connection, principal: Principal, name: str, now_ms: int, *, create: bool = False
) -> VolumeInfo:
    return _info(volume_row(conn, principal, name, create=create, now_ms=now_ms))


def list_volumes(conn: Connection, principal: Principal) -> list[VolumeInfo]:
    rows = conn.execute(
        select(volumes).where(volumes.c.account_id == _account(principal)).order_by(volumes.c.name)
    )
    return [_info(r) for r in rows]


def _load(store: BlobStore, ref: str | None, version: int) -> Manifest:
    if ref is None:
        return Manifest(version=0)
    return Manifest.model_validate_json(store.get(ref))


def manifest(
    conn: Connection, store: BlobStore, principal: Principal, name: str, version: int | None
) -> Manifest:
    """The manifest of ``version`` (default: the latest)."""
    row = volume_row(conn, principal, name)
    if version is None or version == row.version:
        return _load(store, row.manifest_ref, row.version)
    ref = conn.execute(
        select(volume_versions.c.manifest_ref).where(
            volume_versions.c.volume_id == row.id, volume_versions.c.version == version
        )
    ).scalar_one_or_none()
    if ref is None:
        raise NotFoundError(f"volume {name!r} has no version {version} (see its history)")
    return _load(store, ref, version)


def _charge(conn: Connection, row: Any, until_ms: int, price_micros: int) -> None:
    """Charge the volume's current size from where metering stopped to ``until_ms``."""
    start = row.metered_until_ms
    if until_ms <= start:
        return
    cost = storage_cost(row.size_bytes, price_micros, start, until_ms)
    if cost > 0:
        post_entry(
            conn,
            f"volume:{row.id}:{start}",
            EntryKind.CHARGE,
            until_ms,
            (Posting(renter_account(row.account_id), -cost), Posting(PLATFORM_FEES, cost)),
            memo=f"volume {row.name}: {row.size_bytes} bytes [{start}, {until_ms})",
            context=EntryContext(
                renter=row.account_id,
                meter=f"volume:{row.id}",
                start_ms=start,
                end_ms=until_ms,
                cost_micros=cost,
            ),
        )
    conn.execute(update(volumes).where(volumes.c.id == row.id).values(metered_until_ms=until_ms))


def meter_volumes(conn: Connection, now_ms: int, interval_ms: int, price_micros: int) -> int:
    """Charge every volume whose metering is at least ``interval_ms`` behind."""
    rows = conn.execute(
        select(volumes).where(volumes.c.metered_until_ms <= now_ms - interval_ms)
    ).all()
    for row in rows:
        _charge(conn, row, now_ms, price_micros)
    return len(rows)


def _check_tree(files: dict[str, FileEntry], written: list[str]) -> None:
    """Refuses a written path that is also a folder of the volume's files (``a`` beside
    ``a/b``): no container could mount both."""
    if not written:
        return
    folders: set[str] = set()
    for f in files:
        d = f
        while "/" in d:
            d = d.rsplit("/", 1)[0]
            if d in folders:
                break  # and so are the folders above it
            folders.add(d)
    for path in written:
        if path in folders:
            raise ConflictError(
                f"{path!r} is a folder of this volume's files, so it cannot be a file too: "
                "remove the files under it in the same commit, or pick another path. "
                "Nothing was committed."
            )
        parts = path.split("/")
        for k in range(1, len(parts)):
            above = "/".join(parts[:k])
            if above in files:
                raise ConflictError(
                    f"{path!r} is under {above!r}, which is a file: remove {above!r} in the "
                    "same commit, or pick another path. Nothing was committed."
                )


def commit(
    conn: Connection,
    store: BlobStore,
    principal: Principal,
    name: str,
    req: VolumeCommit,
    now_ms: int,
    *,
    quota_bytes: int,
    price_micros: int,
) -> VolumeVersion:
    row = volume_row(conn, principal, name)
    # The volume's row is held for the transaction, and read again under it: commits to one
    # volume queue up (on SQLite too, where commits at once took one version number).
    lock_row(conn, volumes, volumes.c.id, row.id)
    row = conn.execute(select(volumes).where(volumes.c.id == row.id)).one()
    if req.base_version > row.version:
        raise NotFoundError(f"volume {name!r} has no version {req.base_version} yet")
    account = row.account_id
    wanted = {sha for e in req.changes.values() if e is not None for sha in e.chunks}
    sizes: dict[str, int] = {}
    for batch in _batches(sorted(wanted), 500):
        for r in conn.execute(
            select(blobs.c.sha256, blobs.c.size).where(
                blobs.c.account_id == account, blobs.c.sha256.in_(batch)
            )
        ):
            sizes[r.sha256] = int(r.size)
    if wanted - sizes.keys():
        missing = sorted(wanted - sizes.keys())[0]
        raise NotFoundError(
            f"chunk {missing} is not uploaded; upload every chunk before committing"
        )
    for path, entry in req.changes.items():
        # The quota and the storage charge count a file's size: it must be what its chunks hold.
        if entry is not None and entry.size != (held := sum(sizes[c] for c in entry.chunks)):
            raise InvalidRequestError(
                f"file {path!r} gives its size as {entry.size:,} bytes, but its chunks hold "
                f"{held:,}; a file's size is the sum of its chunks' sizes. Nothing was committed."
            )
    current = _load(store, row.manifest_ref, row.version)
    files: dict[str, FileEntry] = dict(current.files)
    for path, entry in req.changes.items():
        if entry is None:
            files.pop(path, None)
        else:
            files[path] = entry
    _check_tree(files, [p for p, e in req.changes.items() if e is not None])
    size = sum(e.size for e in files.values())
    others = conn.execute(
        select(func.coalesce(func.sum(volumes.c.size_bytes), 0)).where(
            volumes.c.account_id == account, volumes.c.id != row.id
        )
    ).scalar_one()
    if int(others) + size > quota_bytes:
        raise QuotaExceededError(
            f"volume {name!r} would bring your volumes to {(int(others) + size) / GIB:.2f} GiB; "
            f"the quota is {quota_bytes / GIB:g} GiB (CRUCIBLE_VOLUME_QUOTA_GIB): remove files "
            "or delete volumes first. Nothing was committed."
        )
    version = row.version + 1
    data = json.dumps(
        Manifest(version=version, files=files).model_dump(mode="json"), sort_keys=True
    ).encode()
    ref = store.put(data)
    grant_blob(conn, account, ref, len(data), now_ms)
    _charge(conn, row, now_ms, price_micros)  # the old size up to now, then the new one
    origin = principal.container_id or "client"
    conn.execute(
        insert(volume_versions).values(
            volume_id=row.id,
            version=version,
            manifest_ref=ref,
            files=len(files),
            size_bytes=size,
            changed=len(req.changes),
            created_ms=now_ms,
            origin=origin,
        )
    )
    conn.execute(
        update(volumes)
        .where(volumes.c.id == row.id)
        .values(
            version=version, manifest_ref=ref, files=len(files), size_bytes=size, updated_ms=now_ms
        )
    )
    return VolumeVersion(
        version=version,
        files=len(files),
        size_bytes=size,
        changed=len(req.changes),
        created_ms=now_ms,
        origin=origin,
    )


def _batches(items: list[str], n: int) -> list[list[str]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def history(conn: Connection, principal: Principal, name: str) -> list[VolumeVersion]:
    row = volume_row(conn, principal, name)
    return [
        VolumeVersion(
            version=r.version,
            files=r.files,
            size_bytes=r.size_bytes,
            changed=r.changed,
            created_ms=r.created_ms,
            origin=r.origin,
        )
        for r in conn.execute(
            select(volume_versions)
            .where(volume_versions.c.volume_id == row.id)
            .order_by(volume_versions.c.version.desc())
        )
    ]


def delete_volume(
    conn: Connection, principal: Principal, name: str, now_ms: int, price_micros: int
) -> None:
    """Delete a volume and its history (its storage is charged up to now)."""
    row = volume_row(conn, principal, name)
    _charge(conn, row, now_ms, price_micros)
    conn.execute(delete(volume_versions).where(volume_versions.c.volume_id == row.id))
    conn.execute(delete(volumes).where(volumes.c.id == row.id))
