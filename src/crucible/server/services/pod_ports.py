"""Pods' published HTTP ports: which pod and container a per-pod URL
(``/pods/{pod}/ports/{port}/``, docs/access.md) reaches, and what it refuses.

The URL names the pod, not its container, so it survives ``crucible pod stop``/``start``:
each request goes to the pod's current container. Only ports the pod published as
``PORT/http`` are served there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from crucible.errors import ConflictError, NotFoundError
from crucible.protocol.pods import PodSpec, port_path
from crucible.server.auth import Principal
from crucible.server.services.pods import current_container, require_builder
from crucible.server.store.tables import pods

__all__ = ["PodPort", "pod_account", "pod_port", "running_container"]

# Container states in which a session can reach the pod (services/access.py's _LIVE).
_REACHABLE = ("pending", "starting", "running")


@dataclass(frozen=True)
class PodPort:
    """A published HTTP port of a caller's pod."""

    pod_id: str
    name: str
    port: int
    row: Any  # the pod's row, for running_container

    @property
    def path(self) -> str:
        return port_path(self.pod_id, self.port)


def pod_account(conn: Connection, pod_id: str) -> str | None:
    """The account of pod ``pod_id`` (by id only; None when unknown or deleted)."""
    row = conn.execute(
        select(pods.c.account_id).where(pods.c.id == pod_id, pods.c.state != "deleted")
    ).first()
    return None if row is None else str(row.account_id)


def pod_port(conn: Connection, who: Principal, ref: str, port: int, *, by_name: bool) -> PodPort:
    """The caller's pod ``ref`` (its id; also its name when ``by_name``) and its published
    HTTP ``port``.

    Raises NotFoundError for an unknown pod and another account's (the same message), and
    for a port the pod did not publish as HTTP, naming the ports it did publish."""
    require_builder(who)
    mine = (pods.c.account_id == who.account_id, pods.c.state != "deleted")
    row = conn.execute(select(pods).where(pods.c.id == ref, *mine)).first()
    if row is None and by_name:
        row = conn.execute(
            select(pods).where(pods.c.name == ref, *mine).order_by(pods.c.created_ms.desc())
        ).first()
    if row is None:
        raise NotFoundError(
            f"no pod {ref[:80]!r} in your account; `crucible pod list` shows your pods"
        )
    spec = PodSpec.model_validate(row.spec)
    http = [p.port for p in spec.ports if p.protocol == "http"]
    if port not in http:
        tcp = [p.port for p in spec.ports if p.protocol == "tcp"]
        if port in tcp:
            hint = (
                f"it publishes {port} as tcp: reach it with "
                f"`crucible pod port-forward {row.name} {port}`"
            )
        elif http:
            listed = ", ".join(f"{p} ({port_path(row.id, p)})" for p in http)
            hint = f"its published HTTP ports: {listed}"
        else:
            hint = "it publishes no HTTP port (create a pod with --port PORT/http)"
        raise NotFoundError(f"pod {row.name} did not publish HTTP port {port}; {hint}")
    return PodPort(pod_id=row.id, name=row.name, port=port, row=row)


def running_container(conn: Connection, target: PodPort) -> str:
    """The id of the pod's current container, which a session can reach.

    Raises ConflictError when the pod runs no container now (stopped, pending), saying how
    to start it: its URL stays the same."""
    ct = current_container(conn, target.row)
    if ct is not None and ct.state in _REACHABLE:
        return str(ct.id)
    if ct is None and target.row.state == "active":
        raise ConflictError(
            f"pod {target.name} is not running yet (the market has not placed it); wait "
            f"until `crucible pod show {target.name}` says running"
        )
    state = ct.state if ct is not None and target.row.state == "active" else target.row.state
    raise ConflictError(
        f"pod {target.name} is not running ({state}): `crucible pod start {target.name}` "
        f"starts it again, at the same URL {target.path}"
    )
