"""Deployments: named, versioned apps that outlive their client.

A deploy starts a version (a non-ephemeral app in state ``deploying``), registers its
functions on it like any app, then activates it. Activation makes it the deployment's
current version and moves the previous one to ``retiring``: it keeps its containers for the
calls it already has, takes no new ones (calls to its functions are forwarded to the current
version's function of the same name), and is stopped once it has none left. A deploy that
fails before activation (a syntax error while importing, say) changes nothing: the current
version keeps serving. A rollback re-activates an earlier version the same way.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, func, select, update

from crucible.errors import ConflictError, InvalidRequestError, NotFoundError
from crucible.protocol.classes import ClassSpec
from crucible.protocol.deployments import DeploymentInfo, DeploymentVersion, VersionStarted
from crucible.protocol.ids import new_id
from crucible.server.auth import Principal
from crucible.server.services.apps import FunctionRow, get_function_row, stop_app
from crucible.server.services.class_pools import class_pool, pool_of_class
from crucible.server.services.schedules import drop_schedules, schedule_infos, sync_schedules
from crucible.server.store.bulk import InsertSkipping
from crucible.server.store.locks import lock_row
from crucible.server.store.tables import apps, calls, deployments, functions

__all__ = [
    "activate",
    "current_function",
    "forward_call_target",
    "get_deployment",
    "list_deployments",
    "retire_drained_versions",
    "rollback",
    "start_version",
    "stop_deployment",
]


def _deployment(conn: Connection, principal: Principal, name: str, *, lock: bool = False) -> Any:
    """The deployment's row. ``lock``: held for the rest of the transaction, and read after
    the lock (what changes the current version reads it so: two rollbacks at once each
    retired the version both had read as current, and two versions stayed running)."""
    row = conn.execute(
        select(deployments).where(
            deployments.c.account_id == principal.account_id, deployments.c.name == name
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no deployment named {name!r}; deploy it with `crucible deploy`")
    if lock:
        lock_row(conn, deployments, deployments.c.id, row.id)
        row = conn.execute(select(deployments).where(deployments.c.id == row.id)).one()
    return row


_INSERT_DEPLOYMENT = InsertSkipping(deployments, "account_id", "name")


def start_version(conn: Connection, principal: Principal, name: str, now_ms: int) -> VersionStarted:
    # Made on the first deploy of a name; a no-op when it exists (or another deploy at once
    # made it first: this waits for it and uses its row).
    conn.execute(
        _INSERT_DEPLOYMENT.on(conn),
        {
            "id": new_id("dp"),
            "account_id": principal.account_id,
            "name": name,
            "state": "running",
            "current_app_id": None,
            "version": 0,
            "created_ms": now_ms,
            "updated_ms": now_ms,
        },
    )
    # Held while the next version's number is taken: two deploys at once got the same one.
    dep_id = _deployment(conn, principal, name, lock=True).id
    last = conn.execute(
        select(func.max(apps.c.version)).where(apps.c.deployment_id == dep_id)
    ).scalar()
    version = int(last or 0) + 1
    app_id = new_id("ap")
    conn.execute(
        apps.insert().values(
            id=app_id,
            account_id=principal.account_id,
            name=name,
            state="deploying",
            ephemeral=False,
            created_ms=now_ms,
            heartbeat_ms=now_ms,
            deployment_id=dep_id,
            version=version,
        )
    )
    return VersionStarted(deployment_id=dep_id, name=name, app_id=app_id, version=version)


def _switch(conn: Connection, dep: Any, app_id: str, version: int, now_ms: int) -> None:
    if dep.current_app_id and dep.current_app_id != app_id:
        conn.execute(
            update(apps)
            .where(apps.c.id == dep.current_app_id, apps.c.state == "running")
            .values(state="retiring")
        )
    conn.execute(update(apps).where(apps.c.id == app_id).values(state="running", stopped_ms=None))
    conn.execute(
        update(deployments)
        .where(deployments.c.id == dep.id)
        .values(current_app_id=app_id, version=version, state="running", updated_ms=now_ms)
    )
    sync_schedules(conn, dep.id, app_id, now_ms)


def activate(
    conn: Connection, principal: Principal, name: str, app_id: str, now_ms: int
) -> DeploymentInfo:
    """Make a registered version current; the previous one retires."""
    dep = _deployment(conn, principal, name, lock=True)
    app = conn.execute(
        select(apps).where(apps.c.id == app_id, apps.c.deployment_id == dep.id)
    ).first()
    if app is None:
        raise NotFoundError(f"app {app_id} is not a version of deployment {name!r}")
    if app.state == "running" and dep.current_app_id == app_id and dep.state == "running":
        # Activated already: the same request sent again (its answer was lost on the way)
        # answers as the first did, rather than failing a deploy that succeeded.
        return get_deployment(conn, principal, name)
    if app.state != "deploying":
        raise ConflictError(f"version {app.version} of {name!r} is {app.state}, not deploying")
    n = conn.execute(
        select(func.count()).select_from(functions).where(functions.c.app_id == app_id)
    ).scalar()
    if not n:
        raise InvalidRequestError(
            f"version {app.version} of {name!r} has no functions; register them first"
        )
    _switch(conn, dep, app_id, app.version, now_ms)
    return get_deployment(conn, principal, name)


def rollback(
    conn: Connection, principal: Principal, name: str, version: int, now_ms: int
) -> DeploymentInfo:
    """Make an earlier version current again (its code is still stored)."""
    dep = _deployment(conn, principal, name, lock=True)
    app = conn.execute(
        select(apps).where(apps.c.deployment_id == dep.id, apps.c.version == version)
    ).first()
    if app is None or app.state == "deploying":
        raise NotFoundError(f"deployment {name!r} has no activated version {version}")
    if app.id == dep.current_app_id and dep.state == "running":
        # Current already (a rollback sent again after its answer was lost, or asked twice):
        # answered as it is rather than failing a rollback that took effect.
        return get_deployment(conn, principal, name)
    _switch(conn, dep, app.id, version, now_ms)
    return get_deployment(conn, principal, name)


def stop_deployment(
    conn: Connection, principal: Principal, name: str, now_ms: int
) -> DeploymentInfo:
    """Stop serving: queued calls of every live version are cancelled, containers stop;
    calls by name then get a clear error. A rollback (or a deploy) starts it again."""
    dep = _deployment(conn, principal, name, lock=True)
    for r in conn.execute(
        select(apps.c.id).where(
            apps.c.deployment_id == dep.id, apps.c.state.in_(("running", "retiring"))
        )
    ).all():
        stop_app(conn, principal, r.id, now_ms)
    conn.execute(
        update(deployments)
        .where(deployments.c.id == dep.id)
        .values(state="stopped", updated_ms=now_ms)
    )
    drop_schedules(conn, dep.id)
    return get_deployment(conn, principal, name)


def _info(conn: Connection, dep: Any) -> DeploymentInfo:
    names: dict[str, list[str]] = {}
    for r in conn.execute(
        select(functions.c.app_id, functions.c.name)
        .join(apps, apps.c.id == functions.c.app_id)
        .where(apps.c.deployment_id == dep.id)
    ):
        names.setdefault(r.app_id, []).append(r.name)
    versions = [
        DeploymentVersion(
            version=r.version,
            app_id=r.id,
            state=r.state,
            created_ms=r.created_ms,
            functions=sorted(names.get(r.id, [])),
        )
        for r in conn.execute(
            select(apps).where(apps.c.deployment_id == dep.id).order_by(apps.c.version)
        )
    ]
    return DeploymentInfo(
        id=dep.id,
        name=dep.name,
        state=dep.state,
        version=dep.version,
        app_id=dep.current_app_id,
        created_ms=dep.created_ms,
        updated_ms=dep.updated_ms,
        versions=versions,
        schedules=schedule_infos(conn, dep.id),
    )


def get_deployment(conn: Connection, principal: Principal, name: str) -> DeploymentInfo:
    return _info(conn, _deployment(conn, principal, name))


def list_deployments(conn: Connection, principal: Principal) -> list[DeploymentInfo]:
    rows = conn.execute(
        select(deployments)
        .where(deployments.c.account_id == principal.account_id)
        .order_by(deployments.c.name)
    ).all()
    return [_info(conn, r) for r in rows]


def current_function(conn: Connection, principal: Principal, name: str, fn: str) -> FunctionRow:
    """The function ``fn`` of the deployment's current version (as get_function_row)."""
    dep = _deployment(conn, principal, name)
    if dep.state != "running" or dep.current_app_id is None:
        raise NotFoundError(
            f"deployment {name!r} is {dep.state if dep.current_app_id else 'not activated'}; "
            "deploy it again (`crucible deploy`) or roll back to a version"
        )
    fid = conn.execute(
        select(functions.c.id).where(
            functions.c.app_id == dep.current_app_id, functions.c.name == fn
        )
    ).scalar()
    if fid is None:
        raise NotFoundError(f"deployment {name!r} (version {dep.version}) has no function {fn!r}")
    return get_function_row(conn, principal, str(fid))


def forward_call_target(
    conn: Connection, principal: Principal, fn: FunctionRow, now_ms: int, *, max_pools: int
) -> FunctionRow | None:
    """For a call to a function of a superseded version: the current version's function of
    the same name (None when the app is not a deployment's, or nothing replaces it). For the
    pool of a class's parameters, the current version's pool of the same parameters, made
    now if needed (an error when the class no longer takes them)."""
    row = conn.execute(
        select(apps.c.deployment_id, deployments.c.name, deployments.c.state)
        .join(deployments, deployments.c.id == apps.c.deployment_id)
        .where(apps.c.id == fn.app_id)
    ).first()
    if row is None or row.state != "running":
        return None
    of_class = _class_params_of(fn)
    if of_class is None:  # a function: the current version's of the same name
        try:
            return current_function(conn, principal, row.name, fn.name)
        except NotFoundError:
            return None
    # A class's pool, its default one included: the same parameter values in the current
    # version (forwarded by name, the default pool went to the new defaults).
    cls_name, params = of_class
    try:
        cls = current_function(conn, principal, row.name, cls_name)
    except NotFoundError:
        return None
    if cls.spec.class_spec is None:
        return cls if cls.name == fn.name else None
    return class_pool(
        conn,
        principal,
        cls,
        _still_taken(params, fn.spec.class_spec, cls.spec.class_spec),
        now_ms,
        max_pools=max_pools,
    )


def _class_params_of(fn: FunctionRow) -> tuple[str, dict[str, Any]] | None:
    """A class's function (its default pool or a parameter set's): the class's name and the
    parameter values its calls run with. None for anything else (or a class's function whose
    values cannot be told: a required parameter, a spec from before classes recorded them)."""
    pool = pool_of_class(fn)
    if pool is not None:
        return pool
    spec = fn.spec.class_spec
    if fn.spec.class_params is None or spec is None:
        return None
    defaults = spec.defaults()
    return None if defaults is None else (fn.name, defaults)


def _still_taken(params: dict[str, Any], old: ClassSpec | None, new: ClassSpec) -> dict[str, Any]:
    """``params`` of the old version, less those the new class no longer takes that were
    only the old version's defaults (nobody passed them: the caller never wrote them)."""
    if new.any_params:
        return dict(params)
    taken = {p.name for p in new.params}
    defaults = {p.name: p.default for p in (old.params if old is not None else [])}
    return {
        k: v
        for k, v in params.items()
        if k in taken or k not in defaults or orjson.dumps(defaults[k]) != orjson.dumps(v)
    }


def retire_drained_versions(conn: Connection, now_ms: int) -> list[str]:
    """Stop retiring versions with no queued or running calls left; returns their ids."""
    busy = (
        select(calls.c.id)
        .join(functions, functions.c.id == calls.c.function_id)
        .where(functions.c.app_id == apps.c.id, calls.c.state.in_(("queued", "running")))
        .exists()
    )
    ids = [
        r.id for r in conn.execute(select(apps.c.id).where(apps.c.state == "retiring", ~busy)).all()
    ]
    if ids:
        conn.execute(
            update(apps).where(apps.c.id.in_(ids)).values(state="stopped", stopped_ms=now_ms)
        )
    return ids
