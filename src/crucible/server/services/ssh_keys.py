"""Accounts' SSH public keys: add (validated), list, remove; the keys a container's SSH
server accepts for its account."""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, select

from crucible.errors import ConflictError, InvalidRequestError, NotFoundError
from crucible.protocol.access import SshKeyCreate, SshKeyInfo, fingerprint, parse_public_key
from crucible.protocol.ids import new_id
from crucible.server.auth import Principal
from crucible.server.store.tables import ssh_keys

__all__ = ["account_keys", "add_key", "list_keys", "remove_key"]

# Enough for every laptop and CI runner of a team; a bound on what each SSH login reads.
MAX_KEYS_PER_ACCOUNT = 64


def _info(row: object) -> SshKeyInfo:
    r = row._mapping  # type: ignore[attr-defined]
    return SshKeyInfo(
        id=r["id"],
        name=r["name"],
        type=r["key_type"],
        fingerprint=r["fingerprint"],
        public_key=r["public_key"],
        created_ms=r["created_ms"],
    )


def add_key(conn: Connection, who: Principal, req: SshKeyCreate, now_ms: int) -> SshKeyInfo:
    """Store one public key. Raises InvalidRequestError naming what is wrong with it, and
    ConflictError when the account already has it."""
    try:
        kind, blob, comment = parse_public_key(req.public_key)
    except ValueError as exc:
        raise InvalidRequestError(f"bad SSH public key: {exc}") from exc
    fp = fingerprint(blob)
    existing = conn.execute(
        select(ssh_keys.c.id, ssh_keys.c.fingerprint).where(ssh_keys.c.account_id == who.account_id)
    ).all()
    if any(r.fingerprint == fp for r in existing):
        raise ConflictError(f"this key ({fp}) is already registered for your account")
    if len(existing) >= MAX_KEYS_PER_ACCOUNT:
        raise InvalidRequestError(
            f"your account already has {len(existing)} SSH keys, the most allowed; remove one "
            "with `crucible ssh-key rm ID`"
        )
    name = (req.name or comment or fp)[:64]
    key_id = new_id("sk")
    conn.execute(
        insert(ssh_keys).values(
            id=key_id,
            account_id=who.account_id,
            name=name,
            key_type=kind,
            fingerprint=fp,
            public_key=f"{kind} {blob}",
            created_ms=now_ms,
        )
    )
    row = conn.execute(select(ssh_keys).where(ssh_keys.c.id == key_id)).one()
    return _info(row)


def list_keys(conn: Connection, who: Principal) -> list[SshKeyInfo]:
    rows = conn.execute(
        select(ssh_keys).where(ssh_keys.c.account_id == who.account_id).order_by(ssh_keys.c.id)
    ).all()
    return [_info(r) for r in rows]


def remove_key(conn: Connection, who: Principal, key: str) -> None:
    """Remove a key by id, fingerprint or name. Raises NotFoundError (also for another
    account's key) and InvalidRequestError when a name matches several keys."""
    rows = [
        r
        for r in conn.execute(select(ssh_keys).where(ssh_keys.c.account_id == who.account_id))
        if key in (r.id, r.fingerprint, r.name) or _short_match(key, r.id)
    ]
    if not rows:
        raise NotFoundError(f"no SSH key {key!r} in your account (see `crucible ssh-key list`)")
    if len(rows) > 1:
        raise InvalidRequestError(
            f"{len(rows)} SSH keys are named {key!r}: remove one by its id or fingerprint"
        )
    conn.execute(delete(ssh_keys).where(ssh_keys.c.id == rows[0].id))


def _short_match(ref: str, key_id: str) -> bool:
    """``sk-XXXXXXXX`` (how the CLI shows ids) names the key whose id ends that way."""
    return len(ref) == 11 and ref.startswith("sk-") and key_id.endswith(ref[3:])


def account_keys(conn: Connection, account_id: str) -> list[str]:
    """The account's keys as authorized_keys lines."""
    rows = conn.execute(
        select(ssh_keys.c.public_key, ssh_keys.c.name)
        .where(ssh_keys.c.account_id == account_id)
        .order_by(ssh_keys.c.id)
    ).all()
    return [r.public_key for r in rows]
