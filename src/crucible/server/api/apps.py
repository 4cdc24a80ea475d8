"""Apps and functions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import Field

from crucible.protocol.apps import AppCreate, AppInfo, FunctionCreate, FunctionInfo
from crucible.protocol.classes import ClassPoolCreate
from crucible.protocol.common import Wire
from crucible.server.api.deps import Builder, CallMaker, RequestKey, State
from crucible.server.services import apps as svc
from crucible.server.services import class_pools as pools
from crucible.server.services import request_keys

router = APIRouter(prefix="/v1/apps", tags=["apps"])


class FunctionsCreate(Wire):
    functions: list[FunctionCreate] = Field(min_length=1, max_length=1000)


@router.post("", status_code=201)
def create_app(req: AppCreate, who: Builder, state: State, key: RequestKey = None) -> AppInfo:
    keyed = request_keys.keyed(who, key, "POST /v1/apps", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info = svc.create_app(conn, who, req, now)
        request_keys.keep(conn, keyed, 201, info)
    return info


@router.get("")
async def list_apps(
    who: Builder,
    state: State,
    # The names apps may have (protocol.common.Named): anything else matches no app, and a
    # NUL byte would be refused by PostgreSQL.
    name: str | None = Query(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$"
    ),
) -> list[AppInfo]:
    """The account's apps, newest first (only those named ``name`` when given)."""
    with state.engine.begin() as conn:
        return svc.list_apps(conn, who, name=name)


@router.get("/{app_id}")
async def get_app(app_id: str, who: Builder, state: State) -> AppInfo:
    with state.engine.begin() as conn:
        return svc.get_app(conn, who, app_id)


@router.post("/{app_id}/stop")
async def stop_app(app_id: str, who: Builder, state: State) -> AppInfo:
    with state.engine.begin() as conn:
        svc.refuse_serving_version(conn, who, app_id)
        info = svc.stop_app(conn, who, app_id, state.clock.now_ms())
    state.wakeups.kick_scheduler()
    return info


@router.post("/{app_id}/heartbeat")
async def heartbeat(app_id: str, who: Builder, state: State) -> AppInfo:
    """An ephemeral app's client is alive (the SDK sends this every few seconds)."""
    with state.engine.begin() as conn:
        return svc.heartbeat_app(conn, who, app_id, state.clock.now_ms())


@router.post("/{app_id}/functions", status_code=201)
async def create_functions(
    app_id: str, req: FunctionsCreate, who: Builder, state: State
) -> list[FunctionInfo]:
    with state.engine.begin() as conn:
        return svc.create_functions(conn, who, app_id, req.functions, state.clock.now_ms())


# A function's own app, by name: what a function calling another of its app looks up (a
# container token reaches only its own app; a builder's token any app of its account).
_NAME = Path(min_length=1, max_length=128)


@router.get("/{app_id}/functions/{name}")
def get_function(
    app_id: str, name: Annotated[str, _NAME], who: CallMaker, state: State
) -> FunctionInfo:
    """The app's function ``name`` (an ``@app.cls()`` class's default pool by the class's
    name)."""
    with state.engine.connect() as conn:
        return svc.function_info(svc.function_by_name(conn, who, app_id, name))


@router.post("/{app_id}/functions/{name}/pools")
def class_pool(
    app_id: str, name: Annotated[str, _NAME], req: ClassPoolCreate, who: CallMaker, state: State
) -> FunctionInfo:
    """The pool of an ``@app.cls()`` class's parameters in this app, made from the class's
    function at the first ask (services/class_pools.py), as for a deployment's current
    version."""
    with state.engine.begin() as conn:
        row = pools.class_pool(
            conn,
            who,
            svc.function_by_name(conn, who, app_id, name),
            req.params,
            state.clock.now_ms(),
            max_pools=state.settings.max_class_pools,
        )
    state.wakeups.kick_scheduler()
    return svc.function_info(row)
