"""`crucible volume create|list|ls|put|get|rm|delete|history`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from crucible.cli._confirm import YES, confirm
from crucible.cli._output import clean, console, err_console, fmt_time, print_json, table
from crucible.cli.resources import JSON, _client
from crucible.errors import InvalidRequestError
from crucible.protocol.volumes import VolumeInfo
from crucible.sdk._volumes import Volume

__all__ = ["register"]


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def register(app: typer.Typer) -> None:
    vol_app = typer.Typer(help="Volumes: versioned files your containers mount.")
    app.add_typer(vol_app, name="volume")

    def vol(name: str) -> Volume:
        return Volume(name, _client())

    @vol_app.command("create")
    def create(name: str, as_json: bool = JSON) -> None:
        """Create an empty volume (nothing happens if it exists)."""
        info = VolumeInfo.model_validate(
            _client().post("/v1/volumes", {"name": name, "create_if_missing": True})
        )
        print_json(info.model_dump()) if as_json else console.print(
            f"volume {info.name}: version {info.version}", markup=False
        )

    @vol_app.command("list")
    def list_(as_json: bool = JSON) -> None:
        items = [VolumeInfo.model_validate(v) for v in _client().get("/v1/volumes")]
        if as_json:
            print_json([v.model_dump() for v in items])
            return
        table(
            "Volumes",
            ["name", "version", "files", "size", "updated (UTC)"],
            [
                (v.name, v.version, v.files, _size(v.size_bytes), fmt_time(v.updated_ms))
                for v in items
            ],
        )

    @vol_app.command("ls")
    def ls(name: str, path: str = typer.Argument("/"), as_json: bool = JSON) -> None:
        """Files and directories under PATH."""
        entries = vol(name).listdir(path)
        if as_json:
            print_json([e.__dict__ for e in entries])
            return
        table(
            f"{name}:{path}",
            ["path", "type", "size", "modified (UTC)"],
            [
                (
                    e.path,
                    e.type,
                    _size(e.size) if e.type == "file" else "",
                    fmt_time(e.mtime_ms or None),
                )
                for e in entries
            ],
        )

    @vol_app.command("put")
    def put(
        name: str,
        local: Path,
        remote: str = typer.Argument("/", help="Where in the volume (a directory ends in /)."),
        force: bool = typer.Option(False, "--force", "-f", help="Overwrite existing files."),
    ) -> None:
        """Upload a file, or a directory's contents (under REMOTE, as `cp -r DIR/. REMOTE`),
        as one new version."""
        if not local.exists():
            raise InvalidRequestError(f"{local}: no such file or directory to upload")
        v = vol(name)
        with v.batch_upload(force=force) as up:
            if local.is_dir():
                up.put_directory(local, remote)
            elif remote.endswith("/"):
                up.put_file(local, remote + local.name)
            else:
                up.put_file(local, remote)
        console.print(f"volume {name}: version {v.info().version}", markup=False)

    @vol_app.command("get")
    def get(
        name: str,
        remote: str,
        local: str = typer.Argument(
            "-", help="A file, a directory to put it in, or - for standard output."
        ),
        force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing file."),
    ) -> None:
        """Download a file (streamed chunk by chunk). An existing local file is kept unless
        --force (as `volume put` keeps an existing remote one)."""
        planned = Path(local)
        if local != "-" and planned.is_dir():
            planned = planned / remote.rstrip("/").rsplit("/", 1)[-1]
        if local != "-" and planned.is_file() and not force:
            raise InvalidRequestError(
                f"{planned} exists; give --force to overwrite it, or another local path"
            )
        chunks = iter(vol(name).read_file(remote))
        first = next(chunks, b"")  # a missing file fails here, before LOCAL is written
        if local == "-":
            sys.stdout.buffer.write(first)
            for c in chunks:
                sys.stdout.buffer.write(c)
            sys.stdout.buffer.flush()
            return
        target = Path(local)
        if local.endswith(("/", os.sep)) and not target.is_dir():
            # A trailing slash says a directory was meant (it was written as a file).
            target.mkdir(parents=True)
        if target.is_dir():
            target = target / remote.rstrip("/").rsplit("/", 1)[-1]
        size = len(first)
        with target.open("wb") as f:
            f.write(first)
            for c in chunks:
                f.write(c)
                size += len(c)
        err_console.print(f"wrote {target} ({size} bytes)", markup=False, highlight=False)

    @vol_app.command("rm")
    def rm(
        name: str,
        path: str,
        recursive: bool = typer.Option(False, "--recursive", "-r", help="A whole directory."),
    ) -> None:
        """Remove a file (or a directory with -r), as one new version."""
        done = vol(name).remove_file(path, recursive=recursive)
        console.print(f"volume {name}: version {done.version}", markup=False)

    @vol_app.command("delete")
    def delete(name: str, yes: bool = YES) -> None:
        """Delete the volume and all its versions (asks first; --yes does not)."""
        confirm(f"Delete volume '{clean(name)}' and all its versions?", yes)
        Volume.delete(name, client=_client())
        console.print(f"deleted volume {name}", markup=False)

    @vol_app.command("history")
    def history(name: str, as_json: bool = JSON) -> None:
        versions = vol(name).history()
        if as_json:
            print_json([v.model_dump() for v in versions])
            return
        table(
            f"{name} history",
            ["version", "files", "size", "changed", "by", "at (UTC)"],
            [
                (
                    v.version,
                    v.files,
                    _size(v.size_bytes),
                    v.changed,
                    v.origin,
                    fmt_time(v.created_ms),
                )
                for v in versions
            ],
        )
