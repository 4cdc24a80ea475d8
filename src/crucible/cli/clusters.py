"""`crucible cluster create|list|show|stop|start|rm`: gangs of pods placed all at once or
not at all (docs/pods.md). Each member is also a pod (`crucible pod logs NAME-RANK`)."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from crucible.cli._ids import resolve_id
from crucible.cli._output import console, fmt_usd, print_json, shown, table
from crucible.cli.pods import ssh_keys_of, volumes_of
from crucible.cli.resources import (
    JSON,
    MAX_CARBON,
    MIN_RELIABILITY,
    PREFER,
    REGION,
    VERIFIED,
    _client,
    check_market_options,
)
from crucible.errors import InvalidRequestError, NotFoundError
from crucible.protocol.pods import DEFAULT_DISK, ClusterCreate, ClusterInfo, parse_env
from crucible.protocol.transport import url_part
from crucible.sdk._checks import from_validation_error
from crucible.sdk._client import Client
from crucible.sdk._market_terms import market_terms

__all__ = ["register"]


CLUSTER = typer.Argument(..., help="The cluster's name, id or short id.")


def _path(client: Client, cluster: str) -> str:
    try:
        ref = resolve_id(client, cluster, "cl")
    except NotFoundError:
        ref = cluster
    return f"/v1/clusters/{url_part(ref)}"


def _request(**fields: object) -> ClusterCreate:
    return ClusterCreate.model_validate(fields)


def _print(info: ClusterInfo) -> None:
    reason = f" ({info.reason})" if info.reason else ""
    console.print(
        f"cluster {shown(info.name)}: {shown(info.state)}{shown(reason)}; "
        f"{info.nodes} x {shown(info.gpu or '-')}, master {shown(info.master_addr or '-')}:"
        f"{info.master_port}, cost so far {fmt_usd(info.cost_micros)}"
    )
    table(
        "Members",
        ["rank", "pod", "state", "host", "address"],
        [(m.rank, m.name, m.state, m.host_id or "-", m.address or "-") for m in info.members],
        ids=("host",),
    )


def register(app: typer.Typer) -> None:
    cluster_app = typer.Typer(help="Clusters: several pods placed together, stopped together.")
    app.add_typer(cluster_app, name="cluster")

    @cluster_app.command("create")
    def create(
        name: str = typer.Option(..., "--name", help="Members are NAME-0, NAME-1, ..."),
        nodes: int = typer.Option(..., "--nodes", help="How many members (2-64)."),
        gpus: list[str] = typer.Option(
            ..., "--gpu", metavar="MODEL[:COUNT]", help="Per member, e.g. H100:8 (once)."
        ),
        image: str = typer.Option(None, "--image", help="An OCI image reference."),
        disk: str = typer.Option(DEFAULT_DISK, "--disk", help="Each member's disk."),
        cpu: float = typer.Option(None, "--cpu", min=0.01, help="Cores per member."),
        memory: str = typer.Option(None, "--memory", help="Memory per member, e.g. 64GiB."),
        command: str = typer.Option(None, "--command", help="Run in every member (sh -c)."),
        tier: str = typer.Option(
            "on-demand", "--tier", help="on-demand, interruptible or reserved."
        ),
        bid: float = typer.Option(None, "--bid", help="Interruptible: $ per GPU-hour."),
        max_price: float = typer.Option(None, "--max-price", help="$ per GPU-hour at most."),
        region: str = REGION,
        min_reliability: float = MIN_RELIABILITY,
        prefer: str = PREFER,
        max_carbon: int = MAX_CARBON,
        verified: bool = VERIFIED,
        port: list[str] = typer.Option([], "--port", help="PORT/http or PORT/tcp (repeat)."),
        ssh_key: list[Path] = typer.Option([], "--ssh-key", help="A public key file (repeat)."),
        env: list[str] = typer.Option([], "--env", help="KEY=VALUE (repeat)."),
        volume: list[str] = typer.Option([], "--volume", help="NAME:/path (repeat)."),
        as_json: bool = JSON,
    ) -> None:
        """Create a cluster: every member is placed at once, or none is; each is told RANK,
        WORLD_SIZE, MASTER_ADDR and MASTER_PORT."""
        if len(gpus) > 1:
            # Click keeps the last of a repeated option: a second --gpu replaced the first.
            raise InvalidRequestError(
                f"--gpu is given {len(gpus)} times ({', '.join(gpus)}): every member of a "
                "cluster has the same GPUs; give --gpu once"
            )
        gpu = gpus[0]
        check_market_options(min_reliability, max_carbon)
        try:
            req = _request(
                name=name,
                nodes=nodes,
                gpu=gpu,
                image=image,
                disk=disk,
                cpu=cpu,
                memory=memory,
                command=command,
                env=parse_env(env),
                ports=port,
                ssh_keys=ssh_keys_of(ssh_key),
                volumes=volumes_of(volume),
                market=market_terms(
                    tier,
                    bid,
                    max_price,
                    region=region,
                    min_reliability=min_reliability,
                    prefer=prefer,
                    max_carbon_g_per_kwh=max_carbon,
                    verified=verified,
                    where="crucible cluster create",
                ),
            )
        except ValidationError as exc:
            raise from_validation_error(
                exc, "crucible cluster create", {"nodes": "--nodes"}
            ) from None
        info = ClusterInfo.model_validate(
            _client().post("/v1/clusters", req.model_dump(mode="json"))
        )
        if as_json:
            print_json(info.model_dump())
        else:
            _print(info)

    @cluster_app.command("list")
    def list_(as_json: bool = JSON) -> None:
        """Your clusters."""
        items = [ClusterInfo.model_validate(c) for c in _client().get("/v1/clusters")]
        if as_json:
            print_json([c.model_dump() for c in items])
            return
        table(
            "Clusters",
            ["id", "name", "state", "nodes", "gpu", "cost"],
            [(c.id, c.name, c.state, c.nodes, c.gpu or "-", fmt_usd(c.cost_micros)) for c in items],
            ids=("id",),
        )

    @cluster_app.command("show")
    def show(cluster: str = CLUSTER, as_json: bool = JSON) -> None:
        """A cluster and its members."""
        client = _client()
        info = ClusterInfo.model_validate(client.get(_path(client, cluster)))
        if as_json:
            print_json(info.model_dump())
        else:
            _print(info)

    @cluster_app.command("stop")
    def stop(cluster: str = CLUSTER, as_json: bool = JSON) -> None:
        """Stop every member; their disks stay on their hosts."""
        client = _client()
        info = ClusterInfo.model_validate(client.post(f"{_path(client, cluster)}/stop"))
        if as_json:
            print_json(info.model_dump())
        else:
            _print(info)

    @cluster_app.command("start")
    def start(cluster: str = CLUSTER, as_json: bool = JSON) -> None:
        """Ask the market again for the whole gang."""
        client = _client()
        info = ClusterInfo.model_validate(client.post(f"{_path(client, cluster)}/start"))
        if as_json:
            print_json(info.model_dump())
        else:
            _print(info)

    @cluster_app.command("rm")
    def rm(cluster: str = CLUSTER) -> None:
        """Delete a cluster and its members (stopped first)."""
        client = _client()
        client.transport.delete(_path(client, cluster))
        console.print(f"cluster {shown(cluster)} deleted")

    cluster_app.command("delete", hidden=True)(rm)
