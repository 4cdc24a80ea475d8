"""Model deployments: register, list, show, stop, usage, adapters (the CLI's `crucible
model`). The OpenAI protocol itself is served by api/openai.py."""

from __future__ import annotations

from fastapi import APIRouter

from crucible.protocol.models import AdapterCreate, ModelCreate, ModelInfo, ModelUsage
from crucible.server.api.deps import Builder, RequestKey, State
from crucible.server.services import models as svc
from crucible.server.services import request_keys

router = APIRouter(prefix="/v1", tags=["models"])


@router.post("/models", status_code=201)
def register(req: ModelCreate, who: Builder, state: State, key: RequestKey = None) -> ModelInfo:
    keyed = request_keys.keyed(who, key, "POST /v1/models", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info = svc.register_model(conn, who, req, now)
        request_keys.keep(conn, keyed, 201, info)
    return info


@router.get("/models")
def list_models(who: Builder, state: State) -> list[ModelInfo]:
    with state.engine.connect() as conn:
        return svc.list_models(conn, who)


@router.get("/models/{name}")
def get_model(name: str, who: Builder, state: State) -> ModelInfo:
    with state.engine.connect() as conn:
        return svc.get_model(conn, who, name)


@router.post("/models/{name}/stop")
def stop(name: str, who: Builder, state: State) -> ModelInfo:
    with state.engine.begin() as conn:
        info = svc.stop_model(conn, who, name, state.clock.now_ms())
    state.wakeups.kick_scheduler()
    return info


@router.get("/models/{name}/usage")
def usage(name: str, who: Builder, state: State) -> ModelUsage:
    with state.engine.connect() as conn:
        return svc.model_usage_report(conn, who, name)


@router.post("/models/{name}/adapters", status_code=201)
def add_adapter(
    name: str, req: AdapterCreate, who: Builder, state: State, key: RequestKey = None
) -> ModelInfo:
    keyed = request_keys.keyed(who, key, f"POST /v1/models/{name}/adapters", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info = svc.add_adapter(conn, who, name, req, now)
        request_keys.keep(conn, keyed, 201, info)
    return info
