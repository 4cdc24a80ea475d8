"""SSH keys: an account's public keys, accepted by the SSH server of its containers."""

from __future__ import annotations

from fastapi import APIRouter

from crucible.protocol.access import SshKeyCreate, SshKeyInfo
from crucible.server.api.deps import Builder, RequestKey, State
from crucible.server.services import request_keys
from crucible.server.services import ssh_keys as svc

router = APIRouter(prefix="/v1", tags=["ssh-keys"])


@router.post("/ssh-keys", status_code=201)
def add_ssh_key(
    req: SshKeyCreate, who: Builder, state: State, key: RequestKey = None
) -> SshKeyInfo:
    """Register an OpenSSH public key (one ``TYPE BASE64 [comment]`` line)."""
    keyed = request_keys.keyed(who, key, "POST /v1/ssh-keys", req)
    now = state.clock.now_ms()
    with state.engine.begin() as conn:
        request_keys.claim(conn, keyed, now)
        info = svc.add_key(conn, who, req, now)
        request_keys.keep(conn, keyed, 201, info)
    return info


@router.get("/ssh-keys")
def list_ssh_keys(who: Builder, state: State) -> list[SshKeyInfo]:
    with state.engine.connect() as conn:
        return svc.list_keys(conn, who)


@router.delete("/ssh-keys/{key:path}", status_code=204)
def remove_ssh_key(key: str, who: Builder, state: State) -> None:
    """Remove a key by id, fingerprint (SHA256:..., slashes and all) or name."""
    with state.engine.begin() as conn:
        svc.remove_key(conn, who, key)
