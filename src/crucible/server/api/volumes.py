"""Volumes: builders and the account's running containers (which commit and reload)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from crucible.core.metering import GIB
from crucible.protocol.volumes import (
    Manifest,
    VolumeCommit,
    VolumeCreate,
    VolumeInfo,
    VolumeVersion,
)
from crucible.server.api.deps import Member, RequestKey, State
from crucible.server.services import request_keys
from crucible.server.services import volumes as svc

router = APIRouter(prefix="/v1/volumes", tags=["volumes"])


def _price_micros(state: State) -> int:
    return round(state.settings.volume_price_gib_month_usd * 1_000_000)


@router.post("")
def create_volume(req: VolumeCreate, who: Member, state: State) -> VolumeInfo:
    """The volume ``name`` (created empty when missing and ``create_if_missing``)."""
    with state.engine.begin() as conn:
        return svc.get_volume(
            conn, who, req.name, state.clock.now_ms(), create=req.create_if_missing
        )


@router.get("")
def list_volumes(who: Member, state: State) -> list[VolumeInfo]:
    with state.engine.connect() as conn:
        return svc.list_volumes(conn, who)


@router.get("/{name}")
def get_volume(name: str, who: Member, state: State) -> VolumeInfo:
    with state.engine.connect() as conn:
        return svc.get_volume(conn, who, name, state.clock.now_ms())


@router.delete("/{name}", status_code=204)
def delete_volume(name: str, who: Member, state: State) -> None:
    with state.engine.begin() as conn:
        svc.delete_volume(conn, who, name, state.clock.now_ms(), _price_micros(state))


@router.get("/{name}/manifest")
def get_manifest(
    name: str,
    who: Member,
    state: State,
    version: int | None = Query(default=None, ge=1, le=2**31),
) -> Manifest:
    """Every file of a version (default: the latest) with its chunks."""
    with state.engine.connect() as conn:
        return svc.manifest(conn, state.blobs, who, name, version)


@router.post("/{name}/commit", status_code=201)
def commit(
    name: str, req: VolumeCommit, who: Member, state: State, key: RequestKey = None
) -> VolumeVersion:
    """Apply changes to the latest version: a new version, atomically."""
    keyed = request_keys.keyed(who, key, f"POST /v1/volumes/{name}/commit", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        version = svc.commit(
            conn,
            state.blobs,
            who,
            name,
            req,
            now,
            quota_bytes=int(state.settings.volume_quota_gib * GIB),
            price_micros=_price_micros(state),
        )
        request_keys.keep(conn, keyed, 201, version)
    return version


@router.get("/{name}/history")
def history(name: str, who: Member, state: State) -> list[VolumeVersion]:
    with state.engine.connect() as conn:
        return svc.history(conn, who, name)
