"""`crucible container list`: the ids `container exec|ssh|port-forward` take, which nothing
listed (modal2 F12: they were found only through `crucible call` or the logs). A tenant sees
its own containers only."""

from __future__ import annotations

import json
from pathlib import Path

import app_basic
from harness import Exchange, wait_for


def test_container_list_shows_ones_own_containers(exchange: Exchange, tmp_path: Path) -> None:
    token = exchange.owner_token("lister")
    builder = exchange.client(token)
    home = tmp_path / "cli-home"
    try:
        with app_basic.app.run(client=builder):
            call = app_basic.nap.spawn(30)
            wait_for(lambda: builder.get_call(call.object_id).state == "running", 60, "running")
            out = exchange.cli(token, home, "container", "list", "--json")
            assert out.returncode == 0, out.stderr
            mine = [r for r in json.loads(out.stdout) if r["function"] == "nap"]
            assert len(mine) == 1 and mine[0]["app"] == "basic", out.stdout
            assert mine[0]["state"] in ("starting", "running")
            container = mine[0]["id"]
            # The id it lists is the one `container exec` takes.
            ran = exchange.cli(token, home, "container", "exec", container, "--", "echo", "hi")
            assert ran.returncode == 0 and ran.stdout.strip() == "hi", ran.stdout + ran.stderr
            table = exchange.cli(token, home, "container", "list", "--app", "basic")
            assert table.returncode == 0 and "nap" in table.stdout, table.stdout + table.stderr
            none = exchange.cli(token, home, "container", "list", "--app", "no-such-app")
            assert none.returncode == 0 and "no running containers of app" in none.stdout
            # Another account sees none of them, by listing or by naming the app.
            stranger = exchange.new_account("stranger")
            other = exchange.cli(stranger, home, "container", "list", "--all", "--json")
            assert other.returncode == 0 and json.loads(other.stdout) == [], other.stdout
            call.cancel()
        wait_for(
            lambda: not json.loads(exchange.cli(token, home, "container", "list", "--json").stdout),
            60,
            "no running container once the app stopped",
        )
        ended = json.loads(exchange.cli(token, home, "container", "list", "--all", "--json").stdout)
        assert any(r["id"] == container and r["state"] == "stopped" for r in ended)
    finally:
        builder.close()
