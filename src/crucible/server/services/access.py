"""Who may reach which container: the checks behind an access session (exec, tunnel, SSH)."""

from __future__ import annotations

import re

from sqlalchemy import Connection, select

from crucible.errors import ConflictError, InvalidRequestError, NotFoundError
from crucible.protocol.access import AccessOpen
from crucible.protocol.pods import PodSpec
from crucible.server.auth import Principal
from crucible.server.services.ssh_keys import account_keys
from crucible.server.store.tables import containers, pods

__all__ = ["AccessTarget", "access_target", "container_account"]

_LIVE = ("starting", "running")
_SHORT = re.compile(r"^ct-[0-9a-z]{8}$")


class AccessTarget:
    def __init__(self, container_id: str, host_id: str, ssh_keys: list[str]) -> None:
        self.container_id = container_id
        self.host_id = host_id
        self.ssh_keys = ssh_keys


def access_target(
    conn: Connection, who: Principal, container_id: str, req: AccessOpen
) -> AccessTarget:
    """The host of the caller's running container ``container_id``.

    Raises NotFoundError for an unknown container and for another account's (the same
    message: nothing tells them apart), ConflictError when it is not running,
    InvalidRequestError for a request that cannot work (no command, no SSH key)."""
    cols = (
        containers.c.id,
        containers.c.account_id,
        containers.c.host_id,
        containers.c.state,
        containers.c.function_id,
    )
    row = conn.execute(select(*cols).where(containers.c.id == container_id)).first()
    if row is None and _SHORT.match(container_id):  # the short form the CLI prints
        rows = conn.execute(
            select(*cols).where(
                containers.c.account_id == who.account_id,
                containers.c.id.like(f"ct-%{container_id[3:]}"),
                containers.c.state.in_(_LIVE),
            )
        ).all()
        if len(rows) > 1:
            raise InvalidRequestError(
                f"{len(rows)} running containers end in {container_id[3:]}: give the full id"
            )
        row = rows[0] if rows else None
    if row is None or row.account_id != who.account_id:
        raise NotFoundError(
            f"no container {container_id!r} in your account (a container's id is in "
            "`crucible call CALL_ID` or the pod's details)"
        )
    if row.state not in _LIVE:
        raise ConflictError(
            f"container {container_id} is {row.state}, not running: only a running "
            "container can be reached"
        )
    if req.kind == "exec" and not req.argv:
        raise InvalidRequestError("exec needs a command: crucible container exec ID -- CMD")
    if req.kind == "tcp" and req.port is None:
        raise InvalidRequestError("a tunnel needs the port inside the container")
    keys: list[str] = []
    if req.kind == "ssh":
        keys = account_keys(conn, who.account_id) + _pod_keys(conn, row.function_id)
        if not keys:
            raise InvalidRequestError(
                "your account has no SSH key: add one with "
                "`crucible ssh-key add ~/.ssh/id_ed25519.pub`"
            )
    return AccessTarget(row.id, row.host_id, keys)


def _pod_keys(conn: Connection, function_id: str) -> list[str]:
    """The keys a pod was created with (``--ssh-key``), when the container is a pod's."""
    spec = conn.execute(select(pods.c.spec).where(pods.c.function_id == function_id)).scalar()
    return list(PodSpec.model_validate(spec).ssh_keys) if spec is not None else []


def container_account(conn: Connection, container_id: str) -> str | None:
    """The account of a running container, or None."""
    row = conn.execute(
        select(containers.c.account_id).where(
            containers.c.id == container_id, containers.c.state.in_(_LIVE)
        )
    ).first()
    return None if row is None else str(row.account_id)
