"""Pods: create, list, show, stop, start, delete, and what their command printed
(docs/pods.md). Thin: each route opens one transaction and calls services/pods.py."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from starlette.requests import HTTPConnection

from crucible.protocol.common import MAX_WIRE_INT
from crucible.protocol.logs import LogPage
from crucible.protocol.pods import PodCreate, PodInfo, port_path
from crucible.server.api.deps import Builder, RequestKey, State
from crucible.server.api.ports import own_origin
from crucible.server.services import pods as svc
from crucible.server.services import request_keys
from crucible.server.state import ServerState

router = APIRouter(prefix="/v1", tags=["pods"])


def with_port_urls(state: ServerState, request: HTTPConnection, info: PodInfo) -> PodInfo:
    """The pod with the own-host URL of each published HTTP port, when the exchange serves
    them on hosts of their own (``CRUCIBLE_PORTS_DOMAIN``; api/ports_host.py)."""
    if not state.settings.ports_domain:
        return info
    urls = {
        str(port): own_origin(state, request, info.id, port) + port_path(info.id, port)
        for port in info.http_ports()
    }
    return info.model_copy(update={"port_urls": urls})


@router.post("/pods", status_code=201)
def create_pod(
    req: PodCreate, request: Request, who: Builder, state: State, key: RequestKey = None
) -> PodInfo:
    """Create a pod; the market places it on the scheduler's next tick."""
    keyed = request_keys.keyed(who, key, "POST /v1/pods", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info = with_port_urls(state, request, svc.create_pod(conn, who, req, now))
        request_keys.keep(conn, keyed, 201, info)
    state.wakeups.kick_scheduler()
    return info


@router.get("/pods")
def list_pods(request: Request, who: Builder, state: State) -> list[PodInfo]:
    with state.engine.connect() as conn:
        pods = svc.list_pods(conn, who, state.leader.waiting, state.clock.now_ms())
    return [with_port_urls(state, request, p) for p in pods]


@router.get("/pods/{pod}")
def get_pod(pod: str, request: Request, who: Builder, state: State) -> PodInfo:
    """A pod by id or name (another account's pod is not found)."""
    with state.engine.connect() as conn:
        info = svc.get_pod(conn, who, pod, state.leader.waiting, state.clock.now_ms())
    return with_port_urls(state, request, info)


@router.post("/pods/{pod}/stop")
def stop_pod(pod: str, request: Request, who: Builder, state: State) -> PodInfo:
    with state.engine.begin() as conn:
        info, keys = svc.stop_pod(conn, who, pod, state.clock.now_ms())
    state.wakeups.notify_many(keys)
    state.wakeups.kick_scheduler()
    return with_port_urls(state, request, info)


@router.post("/pods/{pod}/start")
def start_pod(pod: str, request: Request, who: Builder, state: State) -> PodInfo:
    with state.engine.begin() as conn:
        info, keys = svc.start_pod(conn, who, pod, state.clock.now_ms())
    state.wakeups.notify_many(keys)
    state.wakeups.kick_scheduler()
    return with_port_urls(state, request, info)


@router.delete("/pods/{pod}", status_code=204)
def delete_pod(pod: str, who: Builder, state: State) -> None:
    with state.engine.begin() as conn:
        keys = svc.delete_pod(conn, who, pod, state.clock.now_ms())
    state.wakeups.notify_many(keys)
    state.wakeups.kick_scheduler()


@router.get("/pods/{pod}/logs")
def pod_logs(
    pod: str,
    who: Builder,
    state: State,
    after: int = Query(0, ge=0, le=MAX_WIRE_INT),
    limit: int = Query(1000, ge=1, le=1000),
) -> LogPage:
    """Lines the pod's command printed, oldest first, after the line id ``after``."""
    with state.engine.connect() as conn:
        return svc.pod_logs(conn, who, pod, after, limit)
