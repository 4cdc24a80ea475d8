"""`crucible deploy FILE`, `crucible deployments [stop|rollback]`, `crucible stop NAME`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from crucible.cli._output import console, fmt_time, print_json, table
from crucible.cli.resources import JSON, _client
from crucible.cli.run import import_app_file
from crucible.errors import InvalidRequestError
from crucible.protocol.deployments import DeploymentInfo
from crucible.sdk._app import App

__all__ = ["register"]


def _pick_app(module: Any, wanted: str | None) -> App:
    found = {v.name: v for v in vars(module).values() if isinstance(v, App)}
    if wanted:
        if wanted not in found:
            raise InvalidRequestError(
                f"no app named {wanted!r} in {module.__name__}; found: "
                + (", ".join(sorted(found)) or "none")
            )
        return found[wanted]
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise InvalidRequestError(f"{module.__name__} defines no crucible.App")
    raise InvalidRequestError(
        f"{module.__name__} defines several apps ({', '.join(sorted(found))}); "
        "pick one with FILE::APP"
    )


def _show(info: DeploymentInfo) -> None:
    current = f"version {info.version}" if info.version else "no version activated"
    console.print(f"{info.name} ({info.id}): {info.state}, {current}")
    table(
        f"{info.name} versions",
        ["version", "state", "app", "functions", "created (UTC)"],
        [
            (v.version, v.state, v.app_id, ", ".join(v.functions), fmt_time(v.created_ms))
            for v in info.versions
        ],
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def deploy(
        target: str = typer.Argument(..., help="FILE.py or FILE.py::APP"),
        name: str = typer.Option(None, help="Deployment name (default: the app's name)."),
        as_json: bool = JSON,
    ) -> None:
        """Deploy an app: a new version that keeps running after this command exits. The
        previous version finishes its calls; if this one fails to register, it keeps
        serving."""
        file, _, wanted = target.partition("::")
        chosen = _pick_app(import_app_file(Path(file)), wanted or None)
        client = _client()
        try:
            info = chosen.deploy(name=name, client=client)
        finally:
            client.close()
        if as_json:
            print_json(info.model_dump())
            return
        console.print(
            f"deployed {info.name} version {info.version}; call it with "
            f"crucible.Function.from_name({info.name!r}, ...)"
        )

    dep_app = typer.Typer(help="Deployments: list, stop, roll back.", invoke_without_command=True)
    app.add_typer(dep_app, name="deployments")

    @dep_app.callback()
    def deployments(ctx: typer.Context, as_json: bool = JSON) -> None:
        """List your deployments and their versions."""
        if ctx.invoked_subcommand:
            return
        items = [DeploymentInfo.model_validate(d) for d in _client().get("/v1/deployments")]
        if as_json:
            print_json([d.model_dump() for d in items])
            return
        if not items:
            console.print("no deployments yet: `crucible deploy app.py`")
        for d in items:
            _show(d)

    def _stop(name: str, as_json: bool) -> None:
        info = DeploymentInfo.model_validate(_client().post(f"/v1/deployments/{name}/stop"))
        print_json(info.model_dump()) if as_json else _show(info)

    @dep_app.command("stop")
    def deployments_stop(name: str, as_json: bool = JSON) -> None:
        """Stop a deployment: queued calls are cancelled and its containers stop."""
        _stop(name, as_json)

    @app.command()
    def stop(name: str, as_json: bool = JSON) -> None:
        """Stop a deployment (same as `crucible deployments stop`)."""
        _stop(name, as_json)

    @dep_app.command("rollback")
    def deployments_rollback(name: str, version: int, as_json: bool = JSON) -> None:
        """Make an earlier version current again."""
        data = _client().post(f"/v1/deployments/{name}/rollback", {"version": version})
        info = DeploymentInfo.model_validate(data)
        print_json(info.model_dump()) if as_json else _show(info)
