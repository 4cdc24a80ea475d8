"""Deployments: start a version, activate it, list, stop, roll back, look up a function."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import Field

from crucible.protocol.apps import FunctionInfo
from crucible.protocol.classes import ClassPoolCreate
from crucible.protocol.common import Wire
from crucible.protocol.deployments import (
    DeploymentCreate,
    DeploymentInfo,
    Rollback,
    VersionStarted,
)
from crucible.server.api.deps import Builder, RequestKey, State
from crucible.server.api.web_origin import endpoint_url
from crucible.server.services import class_pools as pools
from crucible.server.services import deployments as svc
from crucible.server.services import request_keys
from crucible.server.services.apps import function_info

router = APIRouter(prefix="/v1", tags=["deployments"])


class Activate(Wire):
    app_id: str = Field(min_length=1, max_length=32)


@router.post("/deployments", status_code=201)
def start_version(
    req: DeploymentCreate, who: Builder, state: State, key: RequestKey = None
) -> VersionStarted:
    keyed = request_keys.keyed(who, key, "POST /v1/deployments", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        started = svc.start_version(conn, who, req.name, now)
        request_keys.keep(conn, keyed, 201, started)
    return started


@router.post("/deployments/{name}/activate")
def activate(name: str, req: Activate, who: Builder, state: State) -> DeploymentInfo:
    with state.engine.begin() as conn:
        info = svc.activate(conn, who, name, req.app_id, state.clock.now_ms())
    state.web.endpoints.clear()  # the gateway resolves its endpoints afresh
    state.wakeups.kick_scheduler()
    return info


@router.get("/deployments")
def list_deployments(who: Builder, state: State) -> list[DeploymentInfo]:
    with state.engine.connect() as conn:
        return svc.list_deployments(conn, who)


@router.get("/deployments/{name}")
def get_deployment(name: str, who: Builder, state: State) -> DeploymentInfo:
    with state.engine.connect() as conn:
        return svc.get_deployment(conn, who, name)


@router.post("/deployments/{name}/stop")
def stop(name: str, who: Builder, state: State) -> DeploymentInfo:
    with state.engine.begin() as conn:
        info = svc.stop_deployment(conn, who, name, state.clock.now_ms())
    state.web.endpoints.clear()  # the gateway resolves its endpoints afresh
    state.wakeups.kick_scheduler()
    return info


@router.post("/deployments/{name}/rollback")
def rollback(name: str, req: Rollback, who: Builder, state: State) -> DeploymentInfo:
    with state.engine.begin() as conn:
        info = svc.rollback(conn, who, name, req.version, state.clock.now_ms())
    state.web.endpoints.clear()  # the gateway resolves its endpoints afresh
    state.wakeups.kick_scheduler()
    return info


@router.get("/deployments/{name}/functions/{function}")
def lookup(name: str, function: str, who: Builder, state: State, request: Request) -> FunctionInfo:
    with state.engine.connect() as conn:
        row = svc.current_function(conn, who, name, function)
        url = endpoint_url(state, request, conn, who.account_id, row) if row.spec.web else ""
    return function_info(row, url)


@router.post("/deployments/{name}/functions/{function}/pools")
def class_pool(
    name: str, function: str, req: ClassPoolCreate, who: Builder, state: State
) -> FunctionInfo:
    """The pool of an ``@app.cls()`` class's parameters in the current version, made from
    the deployed class at the first ask (services/class_pools.py)."""
    with state.engine.begin() as conn:
        cls = svc.current_function(conn, who, name, function)
        row = pools.class_pool(
            conn,
            who,
            cls,
            req.params,
            state.clock.now_ms(),
            max_pools=state.settings.max_class_pools,
        )
    state.wakeups.kick_scheduler()
    return function_info(row, "")
