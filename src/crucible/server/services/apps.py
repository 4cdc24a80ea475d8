"""Apps and their functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, true, update

from crucible.errors import (
    ConflictError,
    InvalidGpuError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
)
from crucible.protocol.apps import AppCreate, AppInfo, FunctionCreate, FunctionInfo
from crucible.protocol.gpus import GPU_CATALOG
from crucible.protocol.ids import new_id
from crucible.server.auth import Principal
from crucible.server.services.blobs import require_blob
from crucible.server.services.calls import cancel_queued_calls_of_app
from crucible.server.services.function_specs import SPECS
from crucible.server.services.secrets import require_secrets
from crucible.server.services.volumes import volume_row
from crucible.server.store.tables import apps, containers, deployments, functions, pods

__all__ = [
    "FunctionRow",
    "create_app",
    "create_functions",
    "function_by_name",
    "function_info",
    "function_names",
    "get_app",
    "get_function_row",
    "heartbeat_app",
    "list_apps",
    "refuse_serving_version",
    "require_own_app",
    "stop_abandoned_apps",
    "stop_app",
]


def _require_builder(principal: Principal) -> None:
    if principal.scope not in ("admin", "user"):
        raise PermissionDeniedError(f"a {principal.scope} token cannot manage apps")


def _app_info(row: Any, n_functions: int = 0, n_containers: int = 0) -> AppInfo:
    return AppInfo(
        id=row.id,
        name=row.name,
        state=row.state,
        ephemeral=row.ephemeral,
        created_ms=row.created_ms,
        stopped_ms=row.stopped_ms,
        functions=n_functions,
        containers=n_containers,
    )


def _live_containers(app_id: Any) -> Any:
    """How many of the app's containers are not stopped (a scalar subquery; with
    ``apps.c.id``, correlated to the enclosing query's app). A join, not ``IN (SELECT ...)``:
    the nested select did not correlate, and every app of a list showed every live container
    of the exchange, other accounts' included."""
    return (
        select(func.count())
        .select_from(containers.join(functions, functions.c.id == containers.c.function_id))
        .where(functions.c.app_id == app_id, containers.c.state != "stopped")
        .scalar_subquery()
    )


# Apps an account may have that are not stopped (pods' own apps aside: pods have their own
# limit). Each is read by the scheduler while it runs; 10,000 empty ones took 9 s to make.
MAX_RUNNING_APPS = 1_000


def create_app(conn: Connection, principal: Principal, req: AppCreate, now_ms: int) -> AppInfo:
    _require_builder(principal)
    running = conn.execute(
        select(func.count())
        .select_from(apps)
        .where(
            apps.c.account_id == principal.account_id,
            apps.c.state != "stopped",
            apps.c.id.not_in(select(pods.c.app_id)),
        )
    ).scalar_one()
    if running >= MAX_RUNNING_APPS:
        raise QuotaExceededError(
            f"this account already has {running} apps running, the most allowed: stop the "
            "ones you no longer need (`crucible apps`, `crucible apps stop APP`)"
        )
    app_id = new_id("ap")
    conn.execute(
        insert(apps).values(
            id=app_id,
            account_id=principal.account_id,
            name=req.name,
            state="running",
            ephemeral=req.ephemeral,
            created_ms=now_ms,
            heartbeat_ms=now_ms,
        )
    )
    return AppInfo(
        id=app_id, name=req.name, state="running", ephemeral=req.ephemeral, created_ms=now_ms
    )


def _app_row(conn: Connection, principal: Principal, app_id: str) -> Any:
    row = conn.execute(
        select(apps).where(apps.c.id == app_id, apps.c.account_id == principal.account_id)
    ).first()
    if row is None:
        raise NotFoundError(f"app {app_id} not found")
    return row


def get_app(conn: Connection, principal: Principal, app_id: str) -> AppInfo:
    row = _app_row(conn, principal, app_id)
    n, live = conn.execute(
        select(
            select(func.count())
            .select_from(functions)
            .where(functions.c.app_id == app_id)
            .scalar_subquery(),
            _live_containers(app_id),
        )
    ).one()
    return _app_info(row, n, live)


def list_apps(
    conn: Connection, principal: Principal, limit: int = 100, name: str | None = None
) -> list[AppInfo]:
    """The account's apps, newest first; only those called ``name`` when it is given."""
    counts = (
        select(functions.c.app_id, func.count().label("n")).group_by(functions.c.app_id).subquery()
    )
    query = (
        select(apps, counts.c.n, _live_containers(apps.c.id).label("live"))
        .outerjoin(counts, counts.c.app_id == apps.c.id)
        .where(apps.c.account_id == principal.account_id, apps.c.id.not_in(select(pods.c.app_id)))
    )
    if name is not None:
        query = query.where(apps.c.name == name)
    rows = conn.execute(query.order_by(apps.c.id.desc()).limit(limit))
    return [_app_info(r, r.n or 0, r.live or 0) for r in rows]


def stop_app(conn: Connection, principal: Principal, app_id: str, now_ms: int) -> AppInfo:
    """Stop an app: queued calls are cancelled, containers are stopped by the scheduler.
    Stopping a stopped app returns it unchanged."""
    row = _app_row(conn, principal, app_id)
    if row.state != "stopped":
        conn.execute(
            update(apps).where(apps.c.id == app_id).values(state="stopped", stopped_ms=now_ms)
        )
        cancel_queued_calls_of_app(conn, app_id, now_ms)
    return get_app(conn, principal, app_id)


def refuse_serving_version(conn: Connection, principal: Principal, app_id: str) -> None:
    """A builder stops a deployment, not the app that serves it: stopping only its app left
    the deployment listed as running with nothing to serve its calls."""
    _app_row(conn, principal, app_id)
    name = conn.execute(
        select(deployments.c.name).where(
            deployments.c.current_app_id == app_id, deployments.c.state == "running"
        )
    ).scalar()
    if name is not None:
        raise ConflictError(
            f"app {app_id} serves deployment {name!r}: stop the deployment instead "
            f"(`crucible deployments stop {name}`), or roll it back to another version first"
        )


def heartbeat_app(conn: Connection, principal: Principal, app_id: str, now_ms: int) -> AppInfo:
    """The client of an ephemeral app is alive. A stopped app stays stopped."""
    _app_row(conn, principal, app_id)
    conn.execute(update(apps).where(apps.c.id == app_id).values(heartbeat_ms=now_ms))
    return get_app(conn, principal, app_id)


def stop_abandoned_apps(conn: Connection, now_ms: int, timeout_ms: int) -> list[str]:
    """Stop ephemeral apps whose client stopped heartbeating, and deployment versions left
    deploying for an hour; returns their ids."""
    ids = [
        r.id
        for r in conn.execute(
            select(apps.c.id).where(
                apps.c.state == "running",
                apps.c.ephemeral == true(),  # "=", not "IS": the index serves it
                apps.c.heartbeat_ms < now_ms - timeout_ms,
            )
        )
    ]
    # A deploy interrupted between its version's start and its activation (the client killed,
    # the server restarted under it) left the version "deploying" for good: after an hour,
    # far past any upload, it is stopped.
    ids += [
        r.id
        for r in conn.execute(
            select(apps.c.id).where(
                apps.c.state == "deploying", apps.c.created_ms < now_ms - _DEPLOYING_MS
            )
        )
    ]
    for app_id in ids:
        conn.execute(
            update(apps).where(apps.c.id == app_id).values(state="stopped", stopped_ms=now_ms)
        )
        cancel_queued_calls_of_app(conn, app_id, now_ms)
    return ids


_DEPLOYING_MS = 3_600_000


def _validate(conn: Connection, principal: Principal, spec: FunctionCreate) -> None:
    for ask in spec.resources.gpus:
        if ask.model not in GPU_CATALOG:
            known = ", ".join(sorted(GPU_CATALOG))
            raise InvalidGpuError(f"unknown GPU model {ask.model!r}; known models: {known}")
    require_blob(conn, principal.account_id, spec.code.bundle)
    require_secrets(conn, principal.account_id, spec.secrets)
    for name in spec.volumes.values():
        volume_row(conn, principal, name)  # NotFound, naming it
    for blob in spec.image.blobs if spec.image is not None else []:
        require_blob(conn, principal.account_id, blob)  # local files the image ships


def create_functions(
    conn: Connection,
    principal: Principal,
    app_id: str,
    specs: list[FunctionCreate],
    now_ms: int,
) -> list[FunctionInfo]:
    """Register functions of an app. Registering a name again replaces its spec (a new
    version of the code for the calls made from now on)."""
    _require_builder(principal)
    row = _app_row(conn, principal, app_id)
    # A deployment's version is registered before it is activated, and never after.
    open_states = ("deploying",) if row.deployment_id else ("running",)
    if row.state not in open_states:
        if row.deployment_id:
            raise ConflictError(
                f"version {row.version} of deployment {row.name!r} is {row.state}; its "
                "functions are fixed once activated: deploy a new version"
            )
        raise NotFoundError(f"app {app_id} is stopped; start a new run")
    out: list[FunctionInfo] = []
    for spec in specs:
        _validate(conn, principal, spec)
        existing = conn.execute(
            select(functions.c.id).where(
                functions.c.app_id == app_id, functions.c.name == spec.name
            )
        ).first()
        payload = spec.model_dump(mode="json")
        warm = spec.keeps_warm()
        if existing is not None:
            fid = str(existing.id)
            conn.execute(
                update(functions)
                .where(functions.c.id == fid)
                # A new version: cached parses of the old spec (services/function_specs.py)
                # are not used again, in this process or another replica.
                .values(spec=payload, warm=warm, spec_rev=functions.c.spec_rev + 1)
            )
        else:
            fid = new_id("fn")
            conn.execute(
                insert(functions).values(
                    id=fid,
                    account_id=principal.account_id,
                    app_id=app_id,
                    name=spec.name,
                    spec=payload,
                    warm=warm,
                    created_ms=now_ms,
                )
            )
        out.append(FunctionInfo(id=fid, app_id=app_id, created_ms=now_ms, **spec.model_dump()))
    return out


@dataclass(frozen=True)
class FunctionRow:
    """A function as the API and the services use it: its row, its app's state, and its
    spec typed (read once per version through services/function_specs.SPECS; shared with the
    cache, so never mutated)."""

    id: str
    app_id: str
    account_id: str
    name: str
    created_ms: int
    app_state: str
    rev: int  # functions.spec_rev of ``spec``
    spec: FunctionCreate


_SEL_FUNCTION = (
    select(
        functions.c.id,
        functions.c.app_id,
        functions.c.account_id,
        functions.c.name,
        functions.c.spec_rev,
        functions.c.created_ms,
        apps.c.state.label("app_state"),
    )
    .join(apps, apps.c.id == functions.c.app_id)
    .where(functions.c.id == bindparam("b_id"), functions.c.account_id == bindparam("b_account"))
)


def get_function_row(conn: Connection, principal: Principal, function_id: str) -> FunctionRow:
    """The function with its app's state and its typed spec; NotFound for other accounts."""
    row = conn.execute(
        _SEL_FUNCTION, {"b_id": function_id, "b_account": principal.account_id}
    ).first()
    if row is None:
        raise NotFoundError(f"function {function_id} not found")
    parsed = SPECS.at(conn, row.id, row.spec_rev)
    return FunctionRow(
        id=row.id,
        app_id=row.app_id,
        account_id=row.account_id,
        name=row.name,
        created_ms=row.created_ms,
        app_state=row.app_state,
        rev=parsed.rev,
        spec=parsed.spec,
    )


def function_names(conn: Connection, principal: Principal, ids: set[str]) -> dict[str, str]:
    """Names of the caller's functions among ``ids`` (others' are left out)."""
    if not ids:
        return {}
    rows = conn.execute(
        select(functions.c.id, functions.c.name).where(
            functions.c.id.in_(ids), functions.c.account_id == principal.account_id
        )
    )
    return {r.id: r.name for r in rows}


def require_own_app(principal: Principal, app_id: str) -> None:
    """A container token reaches only the app its function belongs to (``principal.app_id``,
    set by api/deps.call_maker; a container principal without it reaches nothing): any other
    app, of its account or not, is not found for it. Other tokens pass (their routes check
    the account)."""
    if principal.container_id is not None and app_id != principal.app_id:
        raise NotFoundError(
            f"app {app_id} not found for this container: a function's container calls only "
            "the functions of its own app (a function of another app is called from the "
            "builder's side, or through a crucible.Queue)"
        )


def function_by_name(conn: Connection, principal: Principal, app_id: str, name: str) -> FunctionRow:
    """The function ``name`` of the app ``app_id`` of the caller's account (for a container,
    of its own app only: :func:`require_own_app`)."""
    require_own_app(principal, app_id)
    found = conn.execute(
        select(functions.c.id).where(
            functions.c.app_id == app_id,
            functions.c.name == name,
            functions.c.account_id == principal.account_id,
        )
    ).scalar()
    if found is None:
        raise NotFoundError(f"app {app_id} has no function named {name!r}")
    return get_function_row(conn, principal, str(found))


def function_info(row: FunctionRow, web_url: str = "") -> FunctionInfo:
    """A function as the API describes it (``web_url``: a deployed web endpoint's URL)."""
    return FunctionInfo(
        id=row.id,
        app_id=row.app_id,
        created_ms=row.created_ms,
        web_url=web_url,
        **row.spec.model_dump(),
    )
