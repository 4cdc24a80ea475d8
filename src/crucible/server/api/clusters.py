"""Clusters: gangs of pods placed all at once or not at all (docs/pods.md). Thin: each route
opens one transaction and calls services/clusters.py."""

from __future__ import annotations

from fastapi import APIRouter

from crucible.protocol.pods import ClusterCreate, ClusterInfo
from crucible.server.api.deps import Builder, State
from crucible.server.services import clusters as svc

router = APIRouter(prefix="/v1", tags=["clusters"])


@router.post("/clusters", status_code=201)
def create_cluster(req: ClusterCreate, who: Builder, state: State) -> ClusterInfo:
    """Create a cluster of ``nodes`` member pods; the market places the gang as a whole."""
    with state.engine.begin() as conn:
        info = svc.create_cluster(conn, who, req, state.clock.now_ms())
    state.wakeups.kick_scheduler()
    return info


@router.get("/clusters")
def list_clusters(who: Builder, state: State) -> list[ClusterInfo]:
    with state.engine.connect() as conn:
        return svc.list_clusters(conn, who, state.leader.waiting)


@router.get("/clusters/{cluster}")
def get_cluster(cluster: str, who: Builder, state: State) -> ClusterInfo:
    """A cluster by id or name, with its members (another account's is not found)."""
    with state.engine.connect() as conn:
        return svc.get_cluster(conn, who, cluster, state.leader.waiting)


@router.post("/clusters/{cluster}/stop")
def stop_cluster(cluster: str, who: Builder, state: State) -> ClusterInfo:
    with state.engine.begin() as conn:
        info, keys = svc.stop_cluster(conn, who, cluster, state.clock.now_ms())
    state.wakeups.notify_many(keys)
    state.wakeups.kick_scheduler()
    return info


@router.post("/clusters/{cluster}/start")
def start_cluster(cluster: str, who: Builder, state: State) -> ClusterInfo:
    with state.engine.begin() as conn:
        info, keys = svc.start_cluster(conn, who, cluster, state.clock.now_ms())
    state.wakeups.notify_many(keys)
    state.wakeups.kick_scheduler()
    return info


@router.delete("/clusters/{cluster}", status_code=204)
def delete_cluster(cluster: str, who: Builder, state: State) -> None:
    with state.engine.begin() as conn:
        keys = svc.delete_cluster(conn, who, cluster, state.clock.now_ms())
    state.wakeups.notify_many(keys)
    state.wakeups.kick_scheduler()
