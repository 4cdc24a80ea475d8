"""Secrets: builders create, list (names and keys), replace and delete them; a running
container reads the values of its own function's secrets, once, at start."""

from __future__ import annotations

from fastapi import APIRouter, Response

from crucible.errors import NotFoundError, PermissionDeniedError
from crucible.protocol.common import Wire
from crucible.protocol.secrets import AppSecretCreate, SecretCreate, SecretInfo, SecretValues
from crucible.server.api.deps import Builder, Container, RequestKey, State
from crucible.server.services import audit, request_keys
from crucible.server.services import secrets as svc

router = APIRouter(prefix="/v1", tags=["secrets"])


class Rotated(Wire):
    resealed: int
    key_id: str


@router.post("/secrets", status_code=201)
def create_secret(
    req: SecretCreate, who: Builder, state: State, response: Response, key: RequestKey = None
) -> SecretInfo:
    """Create a secret, or replace its values with ``overwrite``. The values are never
    returned by any route (nor kept with an Idempotency-Key: the answer holds none)."""
    # Digested without the values (a plain hash of them would be kept a day): the same key
    # with other values for the same names replays the first answer.
    named = req.model_copy(update={"values": dict.fromkeys(req.values, "")})
    keyed = request_keys.keyed(who, key, "POST /v1/secrets", named)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info, created = svc.put_secret(conn, state.secret_box, who, req, now)
        request_keys.keep(conn, keyed, 201 if created else 200, info)
    if not created:
        response.status_code = 200
    return info


@router.get("/secrets")
def list_secrets(who: Builder, state: State) -> list[SecretInfo]:
    with state.engine.connect() as conn:
        return svc.list_secrets(conn, who)


@router.get("/secrets/{name}")
def get_secret(name: str, who: Builder, state: State) -> SecretInfo:
    with state.engine.connect() as conn:
        return svc.get_secret(conn, who, name)


@router.delete("/secrets/{name}", status_code=204)
def delete_secret(name: str, who: Builder, state: State) -> None:
    with state.engine.begin() as conn:
        svc.delete_secret(conn, who, name)


@router.post("/secrets/rotate")
def rotate(who: Builder, state: State) -> Rotated:
    """Re-seal every secret under the keyring's first key (admin)."""
    if not who.is_admin:
        raise PermissionDeniedError("rotating the secrets key needs an admin token")
    with state.engine.begin() as conn:
        n = svc.reseal_all(conn, state.secret_box)
        audit.record(
            conn,
            who,
            "secrets.rotate",
            state.secret_box.current,
            state.clock.now_ms(),
            resealed=n,
        )
    return Rotated(resealed=n, key_id=state.secret_box.current)


@router.post("/apps/{app_id}/secrets", status_code=201)
def create_app_secret(app_id: str, req: AppSecretCreate, who: Builder, state: State) -> SecretInfo:
    """A secret that lives while app ``app_id`` runs (``crucible.Secret.from_dict``)."""
    with state.engine.begin() as conn:
        return svc.create_app_secret(
            conn, state.secret_box, who, app_id, req.values, state.clock.now_ms()
        )


@router.get("/containers/{container_id}/secrets")
def container_secrets(container_id: str, who: Container, state: State) -> SecretValues:
    if who.container_id != container_id:  # another container does not exist for this token
        raise NotFoundError(f"container {container_id} not found")
    with state.engine.connect() as conn:
        return svc.env_for_container(conn, state.secret_box, container_id)


@router.get("/containers/{container_id}/registry-auth")
def container_registry_auth(container_id: str, who: Container, state: State) -> SecretValues:
    """The registry credentials of the container's image (the agent pulls with them)."""
    if who.container_id != container_id:  # another container does not exist for this token
        raise NotFoundError(f"container {container_id} not found")
    with state.engine.connect() as conn:
        return svc.registry_auth_for_container(conn, state.secret_box, container_id)
