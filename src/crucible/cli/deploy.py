"""`crucible deploy FILE`, `crucible serve FILE`, `crucible deployments [stop|rollback]`,
`crucible stop NAME`."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import typer

from crucible.cli._output import console, fmt_time, print_json, shown, table
from crucible.cli.resources import JSON, _client, deployment_name
from crucible.cli.run import import_app_file
from crucible.errors import InvalidRequestError
from crucible.protocol.deployments import DeploymentInfo
from crucible.protocol.transport import url_part
from crucible.sdk._app import App
from crucible.sdk._checks import check_name

__all__ = ["register"]


DEPLOYMENT_HELP = "The deployment's name, or its id (dp-..., full or short)."


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


def _web_functions(client: Any, info: DeploymentInfo) -> list[tuple[str, str]]:
    """(function, URL) of the current version's web endpoints: the URL the exchange gives
    (the endpoint's own host when it serves user content on its own domain), with ``...``
    after an ASGI app's (any path under it)."""
    current = next((v for v in info.versions if v.app_id == info.app_id), None)
    out = []
    for fn in current.functions if current else []:
        spec = client.get(f"/v1/deployments/{info.name}/functions/{fn}")
        if spec.get("web"):
            tail = "" if spec["web"]["kind"] == "fastapi_endpoint" else "..."
            out.append((fn, f"{spec.get('web_url') or ''}{tail}"))
    return out


def _show(info: DeploymentInfo) -> None:
    current = f"version {info.version}" if info.version else "no version activated"
    console.print(f"{shown(info.name)} ({info.id}): {info.state}, {current}")
    table(
        f"{info.name} versions",
        ["version", "state", "app", "functions", "created (UTC)"],
        [
            (v.version, v.state, v.app_id, ", ".join(v.functions), fmt_time(v.created_ms))
            for v in info.versions
        ],
        ids=("app",),
    )
    if info.schedules:
        table(
            f"{info.name} schedules",
            ["function", "schedule", "next run (UTC)", "last tick (UTC)", "last call"],
            [
                (
                    s.function,
                    s.schedule,
                    fmt_time(s.next_run_ms),
                    fmt_time(s.last_tick_ms),
                    s.last_call_id or "-",
                )
                for s in info.schedules
            ],
        )


# `crucible deploy`'s advice when the file does not import (wherever its output wrapped the
# line); `crucible serve` runs it for each change but keeps watching, so its user only has
# to save a fix.
_RUN_AGAIN = re.compile(r"fix\s+it\s+and\s+run\s+the\s+command\s+again")


def _still_watching(failure: str) -> str:
    """A failed redeploy's output as `crucible serve` shows it: without the advice to run
    the command again (serve redeploys by itself when the file changes)."""
    return _RUN_AGAIN.sub("fix it and save the file", failure)


def register(app: typer.Typer) -> None:
    @app.command()
    def deploy(
        target: str = typer.Argument(..., help="FILE.py or FILE.py::APP"),
        name: str = typer.Option(None, help="Deployment name (default: the app's name)."),
        as_json: bool = JSON,
    ) -> None:
        """Deploy an app: a new version that keeps running after this command exits. The
        previous version finishes its calls; if this one fails to register, it keeps
        serving.

        Examples: `crucible deploy app.py`, `crucible deploy app.py::api --name api-eu`."""
        file, _, wanted = target.partition("::")
        chosen = _pick_app(import_app_file(Path(file)), wanted or None)
        client = _client(start="crucible deploy ...")
        try:
            info = chosen.deploy(name=name, client=client)
        finally:
            client.close()
        if as_json:
            print_json(info.model_dump())
            return
        handles = [
            # The member's name when there is one (a class's, usually), else `...`.
            f"crucible.{kind}.from_name({shown(repr(info.name))}, "
            f"{shown(repr(next(iter(members)))) if len(members) == 1 else '...'})"
            for kind, members in (("Function", chosen.functions), ("Cls", chosen.classes))
            if members
        ]
        console.print(
            f"deployed {shown(info.name)} version {info.version}; call it with "
            + " or ".join(handles)
        )
        client = _client()
        try:
            for fn, url in _web_functions(client, info):
                console.print(f"  web endpoint {shown(fn)}: {shown(url)}")
        finally:
            client.close()

    @app.command()
    def serve(
        target: str = typer.Argument(..., help="FILE.py or FILE.py::APP"),
        name: str = typer.Option(None, help="Deployment name (default: the app's, + '-dev')."),
        no_reload: bool = typer.Option(False, "--no-reload", help="Do not watch for changes."),
    ) -> None:
        """Serve an app while you work on it: deploy it (as APP-dev), redeploy when a .py
        file next to it changes (a version that fails to load leaves the previous one
        serving), and stop it when this command ends (Ctrl-C)."""
        file = Path(target.partition("::")[0])
        chosen = _pick_app(import_app_file(file), target.partition("::")[2] or None)
        dep_name = name or f"{chosen.name}-dev"
        check_name("the deployment's name (--name)", dep_name)
        client = _client(start="crucible serve ...")
        watched = file.resolve().parent

        def snapshot() -> dict[Path, float]:
            return {
                p: p.stat().st_mtime
                for p in watched.rglob("*.py")
                if not any(part.startswith(".") for part in p.relative_to(watched).parts)
            }

        def deploy_now(first: bool = False) -> bool:
            # A fresh interpreter imports the code as it is now, packaged as `deploy` does.
            cmd = [sys.executable, "-m", "crucible.cli.main", "deploy", target, "--name", dep_name]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode == 0:
                info = DeploymentInfo.model_validate(
                    client.get(f"/v1/deployments/{url_part(dep_name)}")
                )
                console.print(f"serving {shown(dep_name)} version {info.version}")
                for fn, url in _web_functions(client, info):
                    console.print(f"  {shown(fn)}: {shown(url)}")
                return True
            failure = (done.stderr or done.stdout).strip()[-2000:]
            if first:
                console.print("[red]deploy failed; nothing is served:[/]")
                console.print(shown(failure, lines=True))
                return False
            console.print("[red]deploy failed; the previous version keeps serving:[/]")
            console.print(shown(_still_watching(failure), lines=True))
            console.print(
                f"still watching {shown(str(watched))}: saving a fix to a .py file there "
                "redeploys it"
            )
            return False

        def interrupted(_signum: int, _frame: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, interrupted)  # stopped by a supervisor: clean up too
        # And Ctrl-C even where this process was started with SIGINT ignored (a background
        # job of a script inherits that, and Python then never raises KeyboardInterrupt).
        signal.signal(signal.SIGINT, interrupted)
        if not deploy_now(first=True):
            client.close()
            raise typer.Exit(1)  # a name or an app the exchange refuses: fix it first
        seen = snapshot()
        try:
            while True:
                time.sleep(0.5)
                if no_reload:
                    continue
                now = snapshot()
                if now != seen:
                    seen = now
                    console.print("change detected: redeploying")
                    deploy_now()
        except KeyboardInterrupt:
            pass
        finally:
            client.post(f"/v1/deployments/{url_part(dep_name)}/stop")
            console.print(f"stopped {shown(dep_name)}")
            client.close()

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

    def _stop(ref: str, as_json: bool) -> None:
        client = _client()
        name = deployment_name(client, ref)
        info = DeploymentInfo.model_validate(client.post(f"/v1/deployments/{url_part(name)}/stop"))
        print_json(info.model_dump()) if as_json else _show(info)

    @dep_app.command("stop")
    def deployments_stop(
        name: str = typer.Argument(..., help=DEPLOYMENT_HELP), as_json: bool = JSON
    ) -> None:
        """Stop a deployment: queued calls are cancelled and its containers stop."""
        _stop(name, as_json)

    @app.command()
    def stop(name: str = typer.Argument(..., help=DEPLOYMENT_HELP), as_json: bool = JSON) -> None:
        """Stop a deployment (same as `crucible deployments stop`)."""
        _stop(name, as_json)

    @dep_app.command("rollback")
    def deployments_rollback(
        name: str = typer.Argument(..., help=DEPLOYMENT_HELP),
        version: int = typer.Argument(..., help="The version to make current (a number)."),
        as_json: bool = JSON,
    ) -> None:
        """Make an earlier version current again."""
        client = _client()
        name = deployment_name(client, name)
        data = client.post(f"/v1/deployments/{url_part(name)}/rollback", {"version": version})
        info = DeploymentInfo.model_validate(data)
        print_json(info.model_dump()) if as_json else _show(info)
