"""Pods: a machine (GPUs, CPU, memory, a disk) rented as a lease held until stopped.

A pod owns an app and a function of its own (hidden from app lists), whose spec asks for
exactly one container (``min_containers = max_containers = 1``). The scheduler therefore
places a pod's container through the market like any GPU container (on demand,
interruptible with bid and max price, reserved), the agent runs it, and metering and the
ledger charge it per millisecond like any container. What is pod-specific lives here:

- the pod's wish and outcome (``pods.state``): ``active`` (wants to run), ``stopping``, or
  the settled ``stopped`` / ``preempted`` / ``failed`` / ``deleted``;
- the state shown (:func:`pod_info`), derived from the pod's current container: pending →
  starting → running → stopping, then the settled outcome;
- :func:`settle_pods`, run at the start of each scheduler tick: once a pod's container is
  stopping or gone, the pod's app is stopped so that nothing restarts it (an interruptible
  pod that lost its lease ends ``preempted``; ``start`` asks the market again), and the
  outcome is recorded with its reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection
from types import SimpleNamespace
from typing import Any

from sqlalchemy import Connection, and_, bindparam, case, exists, func, insert, or_, select, update

from crucible.core.metering import interval_cost
from crucible.core.scheduling import never_runs
from crucible.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
)
from crucible.protocol.apps import CodeRef, FunctionCreate
from crucible.protocol.common import GpuAsk, Resources
from crucible.protocol.ids import new_id
from crucible.protocol.image_refs import parse_image_ref
from crucible.protocol.images import ImageSpec
from crucible.protocol.logs import LogPage
from crucible.protocol.pods import (
    NOT_PLACED_YET,
    ClusterNetPlan,
    PodAssignment,
    PodCreate,
    PodInfo,
    PodSpec,
    parse_pod,
)
from crucible.server.auth import Principal
from crucible.server.services.containers import request_stop
from crucible.server.services.logs import read_logs
from crucible.server.services.volumes import volume_row
from crucible.server.store.locks import lock_row
from crucible.server.store.tables import accounts, apps, containers, functions, pods

__all__ = [
    "create_pod",
    "current_container",
    "delete_pod",
    "delete_row",
    "get_pod",
    "insert_pod",
    "list_pods",
    "pod_assignments",
    "pod_homes",
    "pod_info",
    "pod_logs",
    "pod_rows_of_cluster",
    "require_builder",
    "restart_row",
    "settle_pod_of",
    "settle_pods",
    "settle_row",
    "start_pod",
    "stop_pod",
    "stop_row",
]

# The pod's function is never called: its code reference names the pod supervisor, which
# the worker runs instead of loading a bundle (crucible.worker.pod).
_POD_CODE = CodeRef(bundle="0" * 64, module="crucible.worker.pod", qualname="supervise")
_SCALEDOWN_S = 86_400.0  # never idle-stopped: min_containers keeps the one container anyway
_LIVE = ("pending", "starting", "running")
# Pods an account may hold that are not deleted (pending ones cost nothing, yet the
# scheduler weighs each of them on every tick; stopped ones keep a disk on a host).
MAX_PODS = 1000
_SETTLED = ("stopped", "preempted", "failed", "deleted")


def is_pod_function(spec: FunctionCreate) -> bool:
    """Whether a function is a pod's (its code is the pod supervisor): the scheduler's
    reasons then speak of a pod."""
    return spec.code == _POD_CODE


def require_builder(principal: Principal) -> None:
    if principal.scope not in ("admin", "user"):
        raise PermissionDeniedError(f"a {principal.scope} token cannot manage pods")


def _function_spec(spec: PodSpec) -> dict[str, Any]:
    gpus = [GpuAsk(model=spec.gpu_model, count=spec.gpu_count)] if spec.gpu_model else []
    fn = FunctionCreate(
        name="pod",
        code=_POD_CODE,
        resources=Resources(
            cpu=spec.cpu,
            memory_mib=spec.memory_mib,
            gpus=gpus,
            disk_mib=-(-spec.disk_bytes // (1 << 20)),  # whole MiB, rounded up
        ),
        timeout_s=7 * 86400,
        max_containers=1,
        min_containers=1,
        scaledown_window_s=_SCALEDOWN_S,
        market=spec.market,
        volumes=spec.volumes,
        image=_pod_image(spec.image),
    )
    return fn.model_dump(mode="json")


def _pod_image(ref: str | None) -> ImageSpec | None:
    """The OCI image a pod runs (the agent pulls it like a function's
    ``Image.from_registry``); None: the exchange's default image."""
    if ref is None:
        return None
    try:
        parse_image_ref(ref)
    except ValueError as exc:
        raise InvalidRequestError(f"--image {ref[:200]!r}: {exc}") from None
    return ImageSpec(registry=ref)  # its id is the hash of its content


def require_room(conn: Connection, account_id: str, adding: int) -> None:
    """QuotaExceeded when ``adding`` more pods would take the account past :data:`MAX_PODS`
    pods that are not deleted (a cluster's members count one each)."""
    held = conn.execute(
        select(func.count())
        .select_from(pods)
        .where(pods.c.account_id == account_id, pods.c.state != "deleted")
    ).scalar_one()
    _check_room(held, adding)


def _check_room(held: int, adding: int) -> None:
    if held + adding > MAX_PODS:
        raise QuotaExceededError(
            f"this account already has {held} pods (stopped ones included), and at most "
            f"{MAX_PODS} are allowed; remove ones you no longer need with `crucible pod rm POD`"
        )


_HELD_AND_NAMED = select(
    func.count(),
    func.count(case((pods.c.name == bindparam("b_name"), 1))),
).where(pods.c.account_id == bindparam("b_account"), pods.c.state != "deleted")


def create_pod(conn: Connection, principal: Principal, req: PodCreate, now_ms: int) -> PodInfo:
    """Create a pod and ask the market for it (the scheduler places it on its next tick).
    A name already used by a pod of the account that is not deleted is a conflict."""
    require_builder(principal)
    spec = parse_pod(req)
    for name in spec.volumes.values():
        volume_row(conn, principal, name)  # NotFound naming it
    # The account's row is held while its name and quota are checked and the pod written:
    # creates of one name at once made as many pods (the check, then the insert).
    lock_row(conn, accounts, accounts.c.id, principal.account_id)
    # The account's pods that are not deleted, and how many of them have this name, in one
    # statement (the submit path's reads: a name conflict first, then the quota).
    held, taken = conn.execute(
        _HELD_AND_NAMED, {"b_account": principal.account_id, "b_name": spec.name}
    ).one()
    if taken:
        raise ConflictError(
            f"you already have a pod called {spec.name!r}; pick another name, or remove it "
            f"first with `crucible pod rm {spec.name}`"
        )
    _check_room(held, 1)
    row = _insert(conn, principal.account_id, spec, now_ms)
    # Shown from what was just written (no container, nothing metered): reading it back
    # took three more queries on the submit path.
    return _info_of(row, spec, None, 0, None)


def insert_pod(
    conn: Connection,
    account_id: str,
    spec: PodSpec,
    now_ms: int,
    *,
    cluster_id: str | None = None,
    rank: int | None = None,
) -> str:
    """Insert a pod with its app and function; returns its id. A cluster's member is
    placed by the cluster's gang placement, never by the scheduler's plan."""
    return str(_insert(conn, account_id, spec, now_ms, cluster_id=cluster_id, rank=rank).id)


# Built once: a pod's submission writes these three rows.
_INSERT_APP = insert(apps)
_INSERT_FUNCTION = insert(functions)
_INSERT_POD = insert(pods)


def _insert(
    conn: Connection,
    account_id: str,
    spec: PodSpec,
    now_ms: int,
    *,
    cluster_id: str | None = None,
    rank: int | None = None,
) -> Any:
    """:func:`insert_pod`; returns the pod's row as written (a namespace of its columns)."""
    pod_id, app_id, fn_id = new_id("pd"), new_id("ap"), new_id("fn")
    conn.execute(
        _INSERT_APP,
        {
            "id": app_id,
            "account_id": account_id,
            "name": f"pod:{spec.name}",
            "state": "running",
            "ephemeral": False,
            "created_ms": now_ms,
            "heartbeat_ms": now_ms,
        },
    )
    conn.execute(
        _INSERT_FUNCTION,
        {
            "id": fn_id,
            "account_id": account_id,
            "app_id": app_id,
            "name": "pod",
            "spec": _function_spec(spec),
            "warm": cluster_id is None,
            "created_ms": now_ms,
        },
    )
    values: dict[str, Any] = {
        "id": pod_id,
        "account_id": account_id,
        "name": spec.name,
        "spec": spec.model_dump(mode="json"),
        "state": "active",
        "app_id": app_id,
        "function_id": fn_id,
        "created_ms": now_ms,
        "run_started_ms": now_ms,
        "cluster_id": cluster_id,
        "rank": rank,
    }
    conn.execute(_INSERT_POD, values)
    # The columns it did not set, as the store defaults them.
    return SimpleNamespace(
        **values, reason=None, host_id=None, stopped_ms=None, cluster_env=None, cluster_net=None
    )


def _pod_row(conn: Connection, principal: Principal, ref: str, *, deleted: bool = False) -> Any:
    """The caller's pod by id or name (a name: the live pod of that name, else, when
    ``deleted``, the latest deleted one). Another account's pod is not found, as is an
    unknown one."""
    mine = pods.c.account_id == principal.account_id
    row = conn.execute(select(pods).where(mine, pods.c.id == ref)).first()
    if row is None:
        row = conn.execute(
            select(pods)
            .where(mine, pods.c.name == ref, pods.c.state != "deleted")
            .order_by(pods.c.created_ms.desc())
        ).first()
    if row is None and deleted:
        row = conn.execute(
            select(pods).where(mine, pods.c.name == ref).order_by(pods.c.created_ms.desc())
        ).first()
    if row is None or (row.state == "deleted" and not deleted):
        raise NotFoundError(
            f"no pod {ref[:80]!r} in your account; `crucible pod list` shows your pods"
        )
    return row


def current_container(conn: Connection, row: Any) -> Any:
    """The container of the pod's current run, if it has one: its latest container, unless
    that one ended before the latest ``start`` (a previous run's). Not a comparison of
    creation times: a tick that began just before the request can create the container
    with an earlier timestamp than the request's."""
    ct = conn.execute(_LATEST_CONTAINER, {"b_fn": row.function_id}).first()
    return _of_current_run(row, ct)


_LATEST_CONTAINER = (
    select(containers)
    .where(containers.c.function_id == bindparam("b_fn"))
    .order_by(containers.c.created_ms.desc(), containers.c.id.desc())
    .limit(1)
)


def _of_current_run(row: Any, ct: Any) -> Any:
    """``ct`` (the pod's latest container) unless it ended before the latest ``start``."""
    if ct is not None and ct.state == "stopped" and (ct.stopped_ms or 0) < row.run_started_ms:
        return None
    return ct


def _latest_containers(conn: Connection, function_ids: list[str]) -> dict[str, Any]:
    """The latest container of each of ``function_ids`` (pods' functions), in one query per
    thousand pods rather than one per pod: the scheduler settles every active pod each tick."""
    out: dict[str, Any] = {}
    order = (containers.c.created_ms.desc(), containers.c.id.desc())
    rank = func.row_number().over(partition_by=containers.c.function_id, order_by=order)
    for i in range(0, len(function_ids), 1000):
        chunk = function_ids[i : i + 1000]
        ranked = (
            select(containers, rank.label("rank"))
            .where(containers.c.function_id.in_(chunk))
            .subquery()
        )
        for r in conn.execute(select(ranked).where(ranked.c.rank == 1)):
            out[r.function_id] = r
    return out


def _outcome(row: Any, ct: Any) -> tuple[str, str]:
    """How a run ended, from its container: (settled state, reason)."""
    # A cluster's member starts with its cluster (`pod start` refuses a member).
    start = "`crucible cluster start`" if row.cluster_id else "`crucible pod start`"
    if ct.end_cause == "preempted":
        return "preempted", (
            "preempted: the market gave its devices to a higher bid or a reservation; "
            f"{start} asks the market again"
        )
    if ct.end_cause == "gang":
        return "stopped", (
            "another member of its cluster ended; a cluster stops as a whole "
            "(`crucible cluster show` says why)"
        )
    if row.state == "stopping":
        return "stopped", "stopped by you"
    if ct.exit_reason == "host_lost":
        return "failed", (
            f"its host was lost; {start} places it again (on another host its disk starts empty)"
        )
    if ct.exit_reason == "lost":
        return "failed", (
            f"its host's agent no longer runs it (the agent restarted?); {start} places it again"
        )
    if ct.end_cause:
        return "stopped", f"its lease ended ({ct.end_cause.replace('_', ' ')})"
    if ct.exit_reason == "stopped":
        return "stopped", "stopped by its host"
    if ct.exit_code == 0:
        return "stopped", "its command exited with status 0"
    message = (ct.exit_message or "").strip()
    why = f"its container ended ({ct.exit_reason or 'exited'}"
    why += f", status {ct.exit_code})" if ct.exit_code is not None else ")"
    return "failed", why + (f": {message[-1500:]}" if message else "")


def _shown_state(row: Any, ct: Any, waiting: str | None) -> tuple[str, str | None]:
    if row.state in _SETTLED:
        return row.state, row.reason
    if ct is None:
        if row.state == "stopping":
            return "stopping", None
        # No reason from the scheduler: it has not looked yet, or every host that could
        # take the pod is busy.
        return "pending", waiting or NOT_PLACED_YET
    if ct.state == "stopped":
        return _outcome(row, ct)
    if ct.state == "stopping" or row.state == "stopping":
        return "stopping", None
    if ct.state == "pending":
        # Its host reported that it is pulling the pod's image.
        if ct.pulling_ms is not None:
            return "pulling", None
        after = getattr(ct, "start_after_ms", None)
        if after and after > ct.created_ms:  # placed over a preempted lease, in its grace
            at = dt.datetime.fromtimestamp(after / 1000, dt.UTC).strftime("%H:%M:%S UTC")
            return "pending", (
                f"placed; it starts at {at}, when the interruptible lease it preempted on "
                "its host has had its grace period to stop"
            )
        return "pending", None
    if ct.state == "starting":
        return "starting", None
    return "running", None


def _info(
    conn: Connection, row: Any, waiting: dict[str, str] | None = None, now_ms: int | None = None
) -> PodInfo:
    """The pod as shown; with ``now_ms``, its cost so far includes the running container's
    time since it was last metered (metering closes an interval every 30 s or so)."""
    spec = PodSpec.model_validate(row.spec)
    ct = current_container(conn, row)
    cost = int(
        conn.execute(
            select(func.coalesce(func.sum(containers.c.metered_cost_micros), 0)).where(
                containers.c.function_id == row.function_id
            )
        ).scalar_one()
    )
    if now_ms is not None and ct is not None and ct.started_ms and ct.stopped_ms is None:
        since = max(ct.metered_until_ms or ct.started_ms, ct.started_ms)
        cost += interval_cost(ct.rate_micros_per_hour, ct.started_ms, since, max(since, now_ms))
    return _info_of(row, spec, ct, cost, waiting)


def _info_of(
    row: Any, spec: PodSpec, ct: Any, cost: int, waiting: dict[str, str] | None
) -> PodInfo:
    """The pod as shown, from its row, its spec, its current container and its cost."""
    state, reason = _shown_state(row, ct, (waiting or {}).get(row.function_id))
    return PodInfo(
        id=row.id,
        name=row.name,
        state=state,
        reason=reason,
        unplaceable=state == "pending" and ct is None and never_runs(reason),
        gpu=spec.gpu,
        cpu=spec.cpu,
        memory_mib=spec.memory_mib,
        image=spec.image,
        disk_bytes=spec.disk_bytes,
        command=spec.command,
        env_keys=sorted(spec.env),
        ssh_key_count=len(spec.ssh_keys),
        ports=[str(p) for p in spec.ports],
        volumes=spec.volumes,
        tier=spec.market.tier,
        app_id=row.app_id,
        host_id=ct.host_id if ct is not None else row.host_id,
        container_id=ct.id if ct is not None else None,
        rate_micros_per_hour=ct.rate_micros_per_hour if ct is not None else None,
        cost_micros=cost,
        created_ms=row.created_ms,
        started_ms=ct.started_ms if ct is not None else None,
        stopped_ms=(ct.stopped_ms if ct is not None else None) or row.stopped_ms,
        cluster_id=row.cluster_id,
        rank=row.rank,
        address=(row.cluster_env or {}).get("CRUCIBLE_ADDRESS"),
    )


def pod_info(
    conn: Connection, row: Any, waiting: dict[str, str] | None = None, now_ms: int | None = None
) -> PodInfo:
    """The pod of a row of ``pods``, as shown (for the clusters' service)."""
    return _info(conn, row, waiting, now_ms)


def pod_rows_of_cluster(conn: Connection, cluster_id: str) -> list[Any]:
    """The cluster's member pods, by rank."""
    return list(
        conn.execute(select(pods).where(pods.c.cluster_id == cluster_id).order_by(pods.c.rank))
    )


def get_pod(
    conn: Connection,
    principal: Principal,
    ref: str,
    waiting: dict[str, str] | None = None,
    now_ms: int | None = None,
) -> PodInfo:
    require_builder(principal)
    return _info(conn, _pod_row(conn, principal, ref), waiting, now_ms)


def list_pods(
    conn: Connection,
    principal: Principal,
    waiting: dict[str, str] | None = None,
    now_ms: int | None = None,
) -> list[PodInfo]:
    """The account's pods (not deleted ones), newest first."""
    require_builder(principal)
    rows = conn.execute(
        select(pods)
        .where(pods.c.account_id == principal.account_id, pods.c.state != "deleted")
        .order_by(pods.c.created_ms.desc(), pods.c.id.desc())
    ).all()
    return [_info(conn, r, waiting, now_ms) for r in rows]


_STOP_APP = (
    update(apps)
    .where(apps.c.id == bindparam("b_id"), apps.c.state != "stopped")
    .values(state="stopped", stopped_ms=bindparam("b_now"))
)


def _stop_run(conn: Connection, row: Any, now_ms: int, ct: Any) -> list[str]:
    """Stop the app (nothing restarts the pod) and its live container ``ct`` (its
    :func:`current_container`); returns wake-ups."""
    conn.execute(_STOP_APP, {"b_id": row.app_id, "b_now": now_ms})
    if ct is not None and ct.state in _LIVE:
        return request_stop(conn, ct.id, now_ms)
    return []


def _not_a_member(row: Any, action: str) -> None:
    if row.cluster_id is not None:
        raise ConflictError(
            f"pod {row.name!r} is member {row.rank} of a cluster, which runs and stops as a "
            f"whole: `crucible cluster {action}` the cluster instead"
        )


def stop_pod(
    conn: Connection, principal: Principal, ref: str, now_ms: int
) -> tuple[PodInfo, list[str]]:
    """Stop a pod: SIGTERM, the grace, SIGKILL; metering ends with its container. Its disk
    stays on the host. Stopping a pod that is not running changes nothing."""
    require_builder(principal)
    row = _pod_row(conn, principal, ref)
    _not_a_member(row, "stop")
    keys = stop_row(conn, row, now_ms)
    return get_pod(conn, principal, row.id), keys


def stop_row(conn: Connection, row: Any, now_ms: int) -> list[str]:
    """Stop the pod of ``row`` (see :func:`stop_pod`); returns wake-up keys."""
    keys: list[str] = []
    if row.state == "active":
        # Read once: stopping a live container leaves it live (stopping), an ended one
        # ended, so what is decided below is the same before the stop as after it.
        ct = current_container(conn, row)
        keys = _stop_run(conn, row, now_ms, ct)
        if ct is None or ct.state == "stopped":
            # Nothing runs (still pending, or already ended): settled at once.
            state, reason = ("stopped", "stopped by you") if ct is None else _outcome(row, ct)
            if ct is not None and state == "stopped" and ct.exit_code is None:
                reason = "stopped by you"
            conn.execute(
                update(pods)
                .where(pods.c.id == row.id)
                .values(state=state, reason=reason, stopped_ms=now_ms)
            )
        else:
            conn.execute(update(pods).where(pods.c.id == row.id).values(state="stopping"))
    return keys


def start_pod(
    conn: Connection, principal: Principal, ref: str, now_ms: int
) -> tuple[PodInfo, list[str]]:
    """Start a stopped (or preempted, or failed) pod: the market is asked again. Starting a
    pod that runs changes nothing; a stopping one must finish stopping first."""
    require_builder(principal)
    row = _pod_row(conn, principal, ref, deleted=True)
    if row.state != "deleted":
        _not_a_member(row, "start")
        # Its container may have ended since the scheduler's last tick: settle it first.
        settle_row(conn, row, now_ms, current_container(conn, row))
        row = _pod_row(conn, principal, row.id)
    if row.state == "deleted":
        raise ConflictError(
            f"pod {row.name!r} was deleted (its disk with it); create a new pod with "
            "`crucible pod create`"
        )
    if row.state == "stopping":
        raise ConflictError(
            f"pod {row.name!r} is still stopping; run `crucible pod start {row.name}` again "
            "once `crucible pod show` says stopped"
        )
    if row.state in ("stopped", "preempted", "failed"):
        for name in PodSpec.model_validate(row.spec).volumes.values():
            volume_row(conn, principal, name)  # deleted since: NotFound naming it, as at create
    restart_row(conn, row, now_ms)
    return get_pod(conn, principal, row.id), []


def restart_row(conn: Connection, row: Any, now_ms: int) -> None:
    """A settled pod wants to run again (see :func:`start_pod`)."""
    if row.state in ("stopped", "preempted", "failed"):
        conn.execute(
            update(pods)
            .where(pods.c.id == row.id)
            .values(state="active", reason=None, run_started_ms=now_ms, stopped_ms=None)
        )
        conn.execute(
            update(apps)
            .where(apps.c.id == row.app_id)
            .values(state="running", stopped_ms=None, heartbeat_ms=now_ms)
        )


def delete_pod(conn: Connection, principal: Principal, ref: str, now_ms: int) -> list[str]:
    """Delete a pod: stopped first if it runs. Its name is free again at once."""
    require_builder(principal)
    row = _pod_row(conn, principal, ref)
    _not_a_member(row, "rm")
    return delete_row(conn, row, now_ms)


def delete_row(conn: Connection, row: Any, now_ms: int) -> list[str]:
    """Delete the pod of ``row`` (see :func:`delete_pod`); returns wake-up keys."""
    keys = _stop_run(conn, row, now_ms, current_container(conn, row))
    conn.execute(
        update(pods)
        .where(pods.c.id == row.id)
        .values(state="deleted", reason="deleted by you", stopped_ms=now_ms)
    )
    return keys


def pod_logs(
    conn: Connection, principal: Principal, ref: str, after: int = 0, limit: int = 1000
) -> LogPage:
    """What the pod's command printed (stdout and stderr), across its runs, oldest first."""
    require_builder(principal)
    row = _pod_row(conn, principal, ref)
    return read_logs(conn, principal, row.app_id, after=after, limit=limit)


# The pods :func:`settle_row` may have something to do for, found by the store, so that a
# tick does not read (and parse the spec of) every running pod: those stopping, and the
# active ones with a container of their current run stopping or stopped, or live on
# another host than the one recorded. Only the columns settling uses.
_of_pod = containers.c.function_id == pods.c.function_id
_TO_SETTLE = select(
    pods.c.id,
    pods.c.state,
    pods.c.app_id,
    pods.c.function_id,
    pods.c.host_id,
    pods.c.run_started_ms,
    pods.c.cluster_id,  # its outcome's advice: a member starts with its cluster
).where(
    or_(
        pods.c.state == "stopping",
        and_(
            pods.c.state == "active",
            exists().where(
                _of_pod,
                or_(
                    and_(
                        or_(containers.c.state == "stopping", containers.c.state == "stopped"),
                        or_(
                            containers.c.stopped_ms.is_(None),
                            containers.c.stopped_ms >= pods.c.run_started_ms,
                        ),
                    ),
                    and_(
                        or_(
                            containers.c.state == "pending",
                            containers.c.state == "starting",
                            containers.c.state == "running",
                        ),
                        or_(pods.c.host_id.is_(None), containers.c.host_id != pods.c.host_id),
                    ),
                ),
            ),
        ),
    )
)


# Functions with a container changed after a containers' change number (change_seq), once
# per change: made distinct by the caller (SQLite makes a DISTINCT read every container in
# function order instead of the few past the mark in change_seq's index).
_CHANGED_FUNCTIONS = select(containers.c.function_id).where(
    containers.c.change_seq > bindparam("b_since")
)
# More functions changed at once than this: every pod is looked at instead.
_SETTLE_DELTA_MAX = 500


def settle_pods(conn: Connection, now_ms: int, since: int | None = None) -> list[str]:
    """Keep pods and their containers in step; run before each placement.

    A pod whose container is stopping or stopped gets its app stopped, so the scheduler does
    not start another (a preempted interruptible pod stays down until ``start``). Once the
    container has stopped, the outcome is recorded (stopped, preempted, failed) with its
    reason, and the host that holds the pod's disk is remembered.

    ``since``: a containers' change number (``containers.change_seq``) such that the pods
    were settled with every container change up to it in view; then only the stopping pods
    and the pods of functions with a container changed after it are looked at (an active
    pod needs settling only when one of its containers changed: it stopped, or went live on
    another host). None: every pod, as a tick with nothing to go on must."""
    keys: list[str] = []
    rows: list[Any] | None = None
    if since is not None:
        fids = list(set(conn.scalars(_CHANGED_FUNCTIONS, {"b_since": since})))
        if len(fids) <= _SETTLE_DELTA_MAX:
            found = {r.id: r for r in conn.execute(_TO_SETTLE.where(pods.c.state == "stopping"))}
            if fids:
                q = _TO_SETTLE.where(pods.c.function_id.in_(fids))
                found.update((r.id, r) for r in conn.execute(q))
            rows = list(found.values())
    if rows is None:
        rows = list(conn.execute(_TO_SETTLE))
    latest = _latest_containers(conn, [r.function_id for r in rows])
    for row in rows:
        keys += settle_row(conn, row, now_ms, _of_current_run(row, latest.get(row.function_id)))
    return keys


def settle_pod_of(conn: Connection, function_id: str, now_ms: int) -> list[str]:
    """A container of ``function_id`` just ended: if it runs a pod of its own (not a cluster
    member: its cluster settles as a whole), settle that pod now, in the same transaction,
    rather than at the scheduler's next tick. Until then a tick that read the pod's function
    between the end and the settling would start another container for the ended run (a
    pod's function asks for one container)."""
    row = conn.execute(_POD_OF_FUNCTION, {"b_fn": function_id}).first()
    if row is None:
        return []
    return settle_row(conn, row, now_ms, current_container(conn, row))


_POD_OF_FUNCTION = select(
    pods.c.id,
    pods.c.state,
    pods.c.app_id,
    pods.c.function_id,
    pods.c.host_id,
    pods.c.run_started_ms,
    pods.c.cluster_id,  # its outcome's advice: a member starts with its cluster
).where(
    pods.c.function_id == bindparam("b_fn"),
    pods.c.cluster_id.is_(None),
    or_(pods.c.state == "active", pods.c.state == "stopping"),
)


_RECORD_OUTCOME = (
    update(pods)
    .where(pods.c.id == bindparam("b_id"))
    .values(state=bindparam("b_state"), reason=bindparam("b_reason"), stopped_ms=bindparam("b_at"))
)


def settle_row(conn: Connection, row: Any, now_ms: int, ct: Any) -> list[str]:
    """:func:`settle_pods` for one pod (also run by ``start``, which must not find a pod
    whose container has ended still marked as running or stopping); ``ct`` is its
    :func:`current_container`."""
    if row.state not in ("active", "stopping"):
        return []
    if ct is None:
        if row.state == "stopping":
            conn.execute(
                update(pods)
                .where(pods.c.id == row.id)
                .values(state="stopped", reason="stopped by you", stopped_ms=now_ms)
            )
        return []
    if ct.host_id != row.host_id:
        conn.execute(update(pods).where(pods.c.id == row.id).values(host_id=ct.host_id))
    if ct.state in _LIVE and row.state == "active":
        return []
    keys = _stop_run(conn, row, now_ms, ct)
    if ct.state == "stopped":
        state, reason = _outcome(row, ct)
        conn.execute(
            _RECORD_OUTCOME,
            {"b_id": row.id, "b_state": state, "b_reason": reason, "b_at": ct.stopped_ms or now_ms},
        )
    return keys


def pod_homes(conn: Connection, function_ids: Collection[str]) -> dict[str, str]:
    """The host each of these pod functions' disk is on (its last run's), by function id:
    the scheduler places a pod's next run there when that host has the room."""
    if not function_ids:
        return {}
    return {
        r.function_id: r.host_id
        for r in conn.execute(
            select(pods.c.function_id, pods.c.host_id).where(
                pods.c.function_id.in_(list(function_ids)), pods.c.host_id.is_not(None)
            )
        )
    }


def pod_assignments(conn: Connection, function_ids: set[str]) -> dict[str, PodAssignment]:
    """For the agent: the pod run by each of ``function_ids`` that belongs to a pod."""
    if not function_ids:
        return {}
    out: dict[str, PodAssignment] = {}
    for r in conn.execute(
        select(
            pods.c.id, pods.c.function_id, pods.c.spec, pods.c.cluster_env, pods.c.cluster_net
        ).where(pods.c.function_id.in_(function_ids))
    ):
        spec = PodSpec.model_validate(r.spec)
        out[r.function_id] = PodAssignment(
            pod_id=r.id,
            name=spec.name,
            image=spec.image,
            command=spec.command,
            env={**spec.env, **(r.cluster_env or {})},
            ports=spec.ports,
            ssh_keys=spec.ssh_keys,
            disk_bytes=spec.disk_bytes,
            network=ClusterNetPlan.model_validate(r.cluster_net) if r.cluster_net else None,
        )
    return out


def disks_to_prune(conn: Connection, host_id: str, pod_ids: list[str]) -> list[str]:
    """Of the pod disks ``host_id`` holds, those nobody will use again: the pod was deleted
    (or is unknown), it never ran on this host, or it moved to another host and nothing of
    it runs here. A stopped pod's disk on the host that holds it is kept: ``start`` finds it."""
    if not pod_ids:
        return []
    found = {
        r.id: r
        for r in conn.execute(
            select(pods.c.id, pods.c.state, pods.c.host_id, pods.c.function_id).where(
                pods.c.id.in_(pod_ids)
            )
        )
    }
    ran_here: dict[str, bool] = {}  # function id -> whether a container of it is still live
    fids = [r.function_id for r in found.values()]
    if fids:
        for fid, state in conn.execute(
            select(containers.c.function_id, containers.c.state).where(
                containers.c.host_id == host_id, containers.c.function_id.in_(fids)
            )
        ):
            ran_here[fid] = ran_here.get(fid, False) or state != "stopped"

    def unused(pid: str) -> bool:
        row = found.get(pid)
        if row is None or row.state == "deleted" or row.function_id not in ran_here:
            return True
        moved = row.host_id not in (None, host_id)
        return moved and not ran_here[row.function_id]

    return [pid for pid in pod_ids if unused(pid)]
