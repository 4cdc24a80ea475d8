"""crucible.Dict over HTTP: builders and the account's running containers."""

from __future__ import annotations

from fastapi import APIRouter, Query

from crucible.protocol.common import Wire
from crucible.protocol.coordination import DictInfo, DictItems, DictKeys, DictPut, ObjectCreate
from crucible.server.api.deps import Member, State
from crucible.server.services import dicts as svc

router = APIRouter(prefix="/v1/dicts", tags=["dicts"])


class Written(Wire):
    written: int


@router.post("")
def create_dict(req: ObjectCreate, who: Member, state: State) -> DictInfo:
    """The dict ``name`` (created when missing and ``create_if_missing``)."""
    with state.engine.begin() as conn:
        return svc.dict_info(
            conn, who, req.name, state.clock.now_ms(), create=req.create_if_missing
        )


@router.get("")
def list_dicts(who: Member, state: State) -> list[DictInfo]:
    with state.engine.begin() as conn:
        return svc.list_dicts(conn, who, state.clock.now_ms())


@router.get("/{name}")
def get_dict(name: str, who: Member, state: State) -> DictInfo:
    with state.engine.begin() as conn:
        return svc.dict_info(conn, who, name, state.clock.now_ms())


@router.delete("/{name}", status_code=204)
def delete_dict(name: str, who: Member, state: State) -> None:
    with state.engine.begin() as conn:
        svc.delete_dict(conn, who, name)


@router.post("/{name}/put")
def put(name: str, req: DictPut, who: Member, state: State) -> Written:
    with state.engine.begin() as conn:
        n = svc.put_entries(
            conn, who, name, req, state.clock.now_ms(), state.settings.dict_max_entries
        )
    return Written(written=n)


@router.post("/{name}/get")
def get(name: str, req: DictKeys, who: Member, state: State) -> DictItems:
    """The entries of the keys that are present (missing keys are left out)."""
    with state.engine.begin() as conn:
        return DictItems(entries=svc.get_entries(conn, who, name, req.keys, state.clock.now_ms()))


@router.post("/{name}/pop")
def pop(name: str, req: DictKeys, who: Member, state: State) -> DictItems:
    # Not keyed (services/request_keys.py): its answer holds the values, which would be
    # kept a day after they left the dict.
    with state.engine.begin() as conn:
        return DictItems(entries=svc.pop_entries(conn, who, name, req.keys, state.clock.now_ms()))


@router.get("/{name}/items")
def items(
    name: str,
    who: Member,
    state: State,
    after: str | None = Query(default=None, pattern=r"^[0-9a-f]{64}$"),
    limit: int = Query(default=500, ge=1, le=1000),
) -> DictItems:
    with state.engine.begin() as conn:
        return svc.items(conn, who, name, state.clock.now_ms(), after=after, limit=limit)


@router.post("/{name}/clear", status_code=204)
def clear(name: str, who: Member, state: State) -> None:
    with state.engine.begin() as conn:
        svc.clear(conn, who, name, state.clock.now_ms())
