"""Clusters: gangs of pods placed all at once or not at all (docs/pods.md). Thin: each route
opens one transaction and calls services/clusters.py."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.requests import HTTPConnection

from crucible.protocol.pods import ClusterCreate, ClusterInfo
from crucible.server.api.deps import Builder, RequestKey, State
from crucible.server.api.pods import with_port_urls
from crucible.server.services import clusters as svc
from crucible.server.services import request_keys
from crucible.server.state import ServerState

router = APIRouter(prefix="/v1", tags=["clusters"])


def _with_port_urls(state: ServerState, request: HTTPConnection, info: ClusterInfo) -> ClusterInfo:
    """The cluster with each member's own-host port URLs (see api/pods.with_port_urls)."""
    if not state.settings.ports_domain:
        return info
    members = [with_port_urls(state, request, m) for m in info.members]
    return info.model_copy(update={"members": members})


@router.post("/clusters", status_code=201)
def create_cluster(
    req: ClusterCreate, request: Request, who: Builder, state: State, key: RequestKey = None
) -> ClusterInfo:
    """Create a cluster of ``nodes`` member pods; the market places the gang as a whole."""
    keyed = request_keys.keyed(who, key, "POST /v1/clusters", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info = _with_port_urls(state, request, svc.create_cluster(conn, who, req, now))
        request_keys.keep(conn, keyed, 201, info)
    state.wakeups.kick_scheduler()
    return info


@router.get("/clusters")
def list_clusters(request: Request, who: Builder, state: State) -> list[ClusterInfo]:
    with state.engine.connect() as conn:
        found = svc.list_clusters(conn, who, state.leader.waiting, state.clock.now_ms())
    return [_with_port_urls(state, request, c) for c in found]


@router.get("/clusters/{cluster}")
def get_cluster(cluster: str, request: Request, who: Builder, state: State) -> ClusterInfo:
    """A cluster by id or name, with its members (another account's is not found)."""
    with state.engine.connect() as conn:
        info = svc.get_cluster(conn, who, cluster, state.leader.waiting, state.clock.now_ms())
    return _with_port_urls(state, request, info)


@router.post("/clusters/{cluster}/stop")
def stop_cluster(cluster: str, request: Request, who: Builder, state: State) -> ClusterInfo:
    with state.engine.begin() as conn:
        info, keys = svc.stop_cluster(conn, who, cluster, state.clock.now_ms())
    state.wakeups.notify_many(keys)
    state.wakeups.kick_scheduler()
    return _with_port_urls(state, request, info)


@router.post("/clusters/{cluster}/start")
def start_cluster(cluster: str, request: Request, who: Builder, state: State) -> ClusterInfo:
    with state.engine.begin() as conn:
        info, keys = svc.start_cluster(conn, who, cluster, state.clock.now_ms())
    state.wakeups.notify_many(keys)
    state.wakeups.kick_scheduler()
    return _with_port_urls(state, request, info)


@router.delete("/clusters/{cluster}", status_code=204)
def delete_cluster(cluster: str, who: Builder, state: State) -> None:
    with state.engine.begin() as conn:
        keys = svc.delete_cluster(conn, who, cluster, state.clock.now_ms())
    state.wakeups.notify_many(keys)
    state.wakeups.kick_scheduler()
