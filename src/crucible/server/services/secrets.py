"""Secrets: create, replace, list (names and keys only), delete, and open for the owner's
running containers. Values are sealed by :class:`crucible.server.secretbox.SecretBox` before
they reach the store and are opened only in :func:`env_for_container`."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from crucible.errors import ConflictError, NotFoundError, PermissionDeniedError, QuotaExceededError
from crucible.protocol.apps import FunctionCreate
from crucible.protocol.ids import new_id
from crucible.protocol.secrets import SecretCreate, SecretInfo, SecretValues
from crucible.server.auth import Principal
from crucible.server.secretbox import SecretBox
from crucible.server.services.function_specs import SPECS
from crucible.server.store.locks import lock_row
from crucible.server.store.tables import accounts, apps, containers, functions, secrets

__all__ = [
    "create_app_secret",
    "delete_secret",
    "drop_secrets_of_stopped_apps",
    "env_for_container",
    "list_secrets",
    "put_secret",
    "require_secrets",
    "reseal_all",
]

# Named secrets per account, and Secret.from_dict secrets per running app: each is a sealed
# row read when a container starts; far beyond what a team or one app uses.
MAX_SECRETS = 1000


def _require_builder(principal: Principal) -> None:
    if principal.scope not in ("admin", "user"):
        raise PermissionDeniedError(f"a {principal.scope} token cannot manage secrets")


def _context(account_id: str, name: str) -> str:
    return f"secret:{account_id}/{name}"


def _info(row: Any) -> SecretInfo:
    return SecretInfo(
        name=row.name, keys=list(row.keys), created_ms=row.created_ms, updated_ms=row.updated_ms
    )


def _seal(box: SecretBox, account_id: str, name: str, values: dict[str, str]) -> tuple[str, bytes]:
    return box.seal(json.dumps(values, sort_keys=True).encode(), _context(account_id, name))


def _check_room(conn: Connection, owner: Any, kind: Any, whose: str) -> None:
    """QuotaExceeded when the account (named secrets) or the app (``Secret.from_dict``) already
    holds :data:`MAX_SECRETS` secrets."""
    held = conn.execute(select(func.count()).select_from(secrets).where(owner, kind)).scalar_one()
    if held >= MAX_SECRETS:
        what = (
            "delete unused ones with `crucible secret delete NAME`"
            if whose == "account"
            else "pass values through fewer Secret.from_dict() calls"
        )
        raise QuotaExceededError(
            f"this {whose} already has {held} secrets, the most allowed; {what}"
        )


def put_secret(
    conn: Connection, box: SecretBox, principal: Principal, req: SecretCreate, now_ms: int
) -> tuple[SecretInfo, bool]:
    """Create ``req.name``, or replace its values when ``req.overwrite``. Returns the info
    and whether it was created."""
    _require_builder(principal)
    account = principal.account_id
    # Held while the name is looked up and written: a create and a delete of one name at
    # once read it, then found it gone (a 500), and creates at once both inserted it.
    lock_row(conn, accounts, accounts.c.id, account)
    existing = conn.execute(
        select(secrets.c.id, secrets.c.app_id).where(
            secrets.c.account_id == account, secrets.c.name == req.name
        )
    ).first()
    key_id, sealed = _seal(box, account, req.name, req.values)
    keys = sorted(req.values)
    if existing is not None:
        if not req.overwrite or existing.app_id is not None:
            raise ConflictError(
                f"secret {req.name!r} exists; replace its values with `crucible secret create "
                f"{req.name} ... --force` (overwrite=true), or delete it first"
            )
        conn.execute(
            update(secrets)
            .where(secrets.c.id == existing.id)
            .values(key_id=key_id, ciphertext=sealed, keys=keys, updated_ms=now_ms)
        )
        created = False
    else:
        _check_room(conn, secrets.c.account_id == account, secrets.c.app_id.is_(None), "account")
        conn.execute(
            insert(secrets).values(
                id=new_id("se"),
                account_id=account,
                name=req.name,
                app_id=None,
                key_id=key_id,
                ciphertext=sealed,
                keys=keys,
                created_ms=now_ms,
                updated_ms=now_ms,
            )
        )
        created = True
    row = conn.execute(
        select(secrets).where(secrets.c.account_id == account, secrets.c.name == req.name)
    ).one()
    return _info(row), created


def create_app_secret(
    conn: Connection,
    box: SecretBox,
    principal: Principal,
    app_id: str,
    values: dict[str, str],
    now_ms: int,
) -> SecretInfo:
    """A secret that lives as long as the running app ``app_id`` (``Secret.from_dict``), under
    a generated name that functions of the app reference."""
    _require_builder(principal)
    app = conn.execute(
        select(apps.c.state).where(apps.c.id == app_id, apps.c.account_id == principal.account_id)
    ).first()
    if app is None:
        raise NotFoundError(f"app {app_id} not found")
    if app.state == "stopped":
        raise NotFoundError(f"app {app_id} is stopped; start a new run")
    _check_room(conn, secrets.c.app_id == app_id, secrets.c.app_id.is_not(None), "app")
    name = f"app.{app_id}.{new_id('se')[3:]}"
    key_id, sealed = _seal(box, principal.account_id, name, values)
    conn.execute(
        insert(secrets).values(
            id=new_id("se"),
            account_id=principal.account_id,
            name=name,
            app_id=app_id,
            key_id=key_id,
            ciphertext=sealed,
            keys=sorted(values),
            created_ms=now_ms,
            updated_ms=now_ms,
        )
    )
    return SecretInfo(name=name, keys=sorted(values), created_ms=now_ms, updated_ms=now_ms)


def list_secrets(conn: Connection, principal: Principal) -> list[SecretInfo]:
    _require_builder(principal)
    rows = conn.execute(
        select(secrets)
        .where(secrets.c.account_id == principal.account_id, secrets.c.app_id.is_(None))
        .order_by(secrets.c.name)
    )
    return [_info(r) for r in rows]


def get_secret(conn: Connection, principal: Principal, name: str) -> SecretInfo:
    _require_builder(principal)
    row = conn.execute(
        select(secrets).where(secrets.c.account_id == principal.account_id, secrets.c.name == name)
    ).first()
    if row is None:
        raise NotFoundError(f"secret {name!r} not found (see `crucible secret list`)")
    return _info(row).model_copy(update={"used_by": _users(conn, principal.account_id, name)})


def _users(conn: Connection, account_id: str, name: str) -> list[str]:
    """The account's running apps' functions that name secret ``name``, as APP/FUNCTION."""
    rows = conn.execute(
        select(functions.c.id, functions.c.spec_rev, functions.c.name, apps.c.name.label("app"))
        .join(apps, apps.c.id == functions.c.app_id)
        .where(apps.c.account_id == account_id, apps.c.state.in_(("running", "retiring")))
    ).all()
    return sorted(
        {f"{r.app}/{r.name}" for r in rows if name in SPECS.at(conn, r.id, r.spec_rev).spec.secrets}
    )


def delete_secret(conn: Connection, principal: Principal, name: str) -> None:
    _require_builder(principal)
    lock_row(conn, accounts, accounts.c.id, principal.account_id)  # as put_secret
    done = conn.execute(
        delete(secrets).where(
            secrets.c.account_id == principal.account_id,
            secrets.c.name == name,
            secrets.c.app_id.is_(None),
        )
    )
    if done.rowcount == 0:
        raise NotFoundError(f"secret {name!r} not found (see `crucible secret list`)")


def require_secrets(conn: Connection, account_id: str, names: list[str]) -> None:
    """Refuse a function that names a secret its account does not have."""
    if not names:
        return
    have = set(
        conn.execute(
            select(secrets.c.name).where(
                secrets.c.account_id == account_id, secrets.c.name.in_(names)
            )
        ).scalars()
    )
    missing = [n for n in names if n not in have]
    if missing:
        raise NotFoundError(
            f"secret {missing[0]!r} not found: create it with `crucible secret create "
            f"{missing[0]} KEY=VALUE ...` (see `crucible secret list`)"
        )


def _running_spec(conn: Connection, container_id: str) -> tuple[str, FunctionCreate]:
    """A running container's account and its function's spec; NotFound once it stopped."""
    row = conn.execute(
        select(
            containers.c.account_id,
            containers.c.state,
            containers.c.function_id,
            functions.c.spec_rev,
        )
        .join(functions, functions.c.id == containers.c.function_id)
        .where(containers.c.id == container_id)
    ).first()
    if row is None or row.state == "stopped":
        raise NotFoundError(f"container {container_id} is not running")
    return row.account_id, SPECS.at(conn, row.function_id, row.spec_rev).spec


def env_for_container(conn: Connection, box: SecretBox, container_id: str) -> SecretValues:
    """The environment of a running container: the values of its function's secrets, opened
    for its own account only. A secret deleted since the function was registered is skipped."""
    account_id, spec = _running_spec(conn, container_id)
    names = spec.secrets
    env: dict[str, str] = {}
    if not names:
        return SecretValues(env=env)
    sealed = {
        r.name: r
        for r in conn.execute(
            select(secrets.c.name, secrets.c.key_id, secrets.c.ciphertext).where(
                secrets.c.account_id == account_id, secrets.c.name.in_(names)
            )
        )
    }
    for name in names:
        found = sealed.get(name)
        if found is None:
            continue
        plain = box.open(found.key_id, found.ciphertext, _context(account_id, name))
        env.update(json.loads(plain))
    return SecretValues(env=env)


def registry_auth_for_container(
    conn: Connection, box: SecretBox, container_id: str
) -> SecretValues:
    """The registry credentials of a running container's image (``Image.from_registry(ref,
    secret=...)``): ``REGISTRY_USERNAME`` and ``REGISTRY_PASSWORD`` of that secret, opened for
    the container's own account only. Empty when the image names no secret; ``not_found``
    when the secret is gone (the pull fails and says so)."""
    account_id, spec = _running_spec(conn, container_id)
    image = spec.image
    name = image.registry_secret if image is not None else None
    if not name:
        return SecretValues(env={})
    found = conn.execute(
        select(secrets.c.key_id, secrets.c.ciphertext).where(
            secrets.c.account_id == account_id, secrets.c.name == name
        )
    ).first()
    if found is None:
        raise NotFoundError(
            f"the image's registry secret {name!r} does not exist; create it with "
            f"`crucible secret create {name} REGISTRY_USERNAME=... REGISTRY_PASSWORD=...`"
        )
    values = json.loads(box.open(found.key_id, found.ciphertext, _context(account_id, name)))
    keep = ("REGISTRY_USERNAME", "REGISTRY_PASSWORD")
    return SecretValues(env={k: str(values[k]) for k in keep if k in values})


def drop_secrets_of_stopped_apps(conn: Connection) -> int:
    """Delete ``Secret.from_dict`` secrets whose app has stopped."""
    stopped = select(apps.c.id).where(apps.c.state == "stopped")
    done = conn.execute(
        delete(secrets).where(secrets.c.app_id.is_not(None), secrets.c.app_id.in_(stopped))
    )
    return int(done.rowcount or 0)


def reseal_all(conn: Connection, box: SecretBox) -> int:
    """Re-encrypt every secret sealed with an older key under the current one (rotation).
    Returns how many were resealed."""
    n = 0
    rows = conn.execute(
        select(
            secrets.c.id,
            secrets.c.account_id,
            secrets.c.name,
            secrets.c.key_id,
            secrets.c.ciphertext,
        ).where(secrets.c.key_id != box.current)
    ).all()
    for r in rows:
        context = _context(r.account_id, r.name)
        key_id, sealed = box.seal(box.open(r.key_id, r.ciphertext, context), context)
        conn.execute(
            update(secrets).where(secrets.c.id == r.id).values(key_id=key_id, ciphertext=sealed)
        )
        n += 1
    return n
