"""What the CLI prints, against a real exchange (server and agent processes, a real
worker): strings others chose (host names, log lines, remote error messages) never reach
the terminal as escape sequences or Rich markup, and tables fit 80 columns with every id
shown whole, in a short form that every id argument accepts back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crucible.errors import Error
from crucible.protocol.transport import Transport

import app_terminal_escapes
from harness import Exchange, wait_for

ROOT = Path(__file__).resolve().parents[2]
# Bytes a terminal acts on: ESC, BEL, CR, CSI (8-bit), a right-to-left override.
FORBIDDEN = ("\x1b", "\x07", "\r", "\x9b", "\u202e")
SHORT_ID = re.compile(r"\b[a-z]{2}-[0-9a-z]{8}\b")


@pytest.fixture(scope="module")
def exchange(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exchange]:
    root = tmp_path_factory.mktemp("cli-output")
    ex = Exchange(root, f"sqlite:///{root / 'store.db'}")
    ex.start_server()
    ex.start_agent("agent-1")
    try:
        yield ex
    finally:
        ex.close()


@pytest.fixture(scope="module")
def tenant(exchange: Exchange) -> dict[str, str]:
    """A tenant that ran the hostile app: its app id, a succeeded and a failed call."""
    token = exchange.tenant_token("tenant")
    client = exchange.client(token)
    try:
        with app_terminal_escapes.app.run(client=client):
            call = app_terminal_escapes.shout.spawn(3)
            assert call.get(timeout=120) == 3
            failing = app_terminal_escapes.explode.spawn()
            with pytest.raises(ValueError, match="boom"):
                failing.get(timeout=120)
        app_id = client.get_call(call.object_id).app_id
    finally:
        client.close()
    return {"token": token, "app": app_id, "ok": call.object_id, "failed": failing.object_id}


def crucible_cli(
    exchange: Exchange, token: str, *args: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRUCIBLE_")}
    env.update(
        CRUCIBLE_HOME=str(exchange.root / "cli-home"),
        CRUCIBLE_SERVER_URL=exchange.url,
        CRUCIBLE_TOKEN=token,
        COLUMNS="80",
    )
    out = subprocess.run(
        [sys.executable, "-m", "crucible.cli.main", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    if ok:
        assert out.returncode == 0, out.stdout + out.stderr
    for stream in (out.stdout, out.stderr):
        for bad in FORBIDDEN:
            assert bad not in stream, (args, bad, stream)
    return out


def test_log_lines_and_remote_errors_are_printed_inert(
    exchange: Exchange, tenant: dict[str, str]
) -> None:
    logs = crucible_cli(exchange, tenant["token"], "logs", tenant["app"]).stdout
    assert "line 2" in logs and "stderr" in logs
    # Shown, not acted on: the escapes are visible, the markup is literal text.
    assert "\\x1b[2J" in logs and "\\x07" in logs and "\\u202e" in logs
    assert "[red]not red[/red]" in logs
    calls = crucible_cli(exchange, tenant["token"], "calls").stdout
    assert "failed" in calls and "\\x1b" in calls
    timeline = crucible_cli(exchange, tenant["token"], "call", tenant["failed"]).stdout
    assert "boom" in timeline and "\\x1b[2J" in timeline
    # Why it ended, from the call's error (a call refused before it ran has no attempt).
    assert "error: " in timeline


def test_hostile_host_names_are_refused_or_shown_inert(
    exchange: Exchange, tenant: dict[str, str]
) -> None:
    hostile = "evil\x1b[2J\x07[red]host[/red]"
    agent = Transport(exchange.url, exchange.host_token, retry_for_s=0)
    inventory = {"cpu_cores": 1, "memory_mib": 512, "disk_mib": 0, "gpus": []}
    try:
        agent.post("/v1/hosts/register", {"name": hostile, "inventory": inventory})
        accepted = True
    except Error:
        accepted = False  # the server validates names: nothing hostile is stored
    finally:
        agent.close()
    out = crucible_cli(exchange, tenant["token"], "hosts").stdout
    listed = crucible_cli(exchange, tenant["token"], "market", "hosts").stdout
    if accepted:
        assert "\\x1b[2J" in out or "\\x1b[2J" in "".join(out.split())
        # Printed as it is: the markup is text, not a colour.
        assert "evil\\x1b[2J\\x07[red]host[/red]" in listed


def test_error_messages_are_printed_inert(exchange: Exchange, tenant: dict[str, str]) -> None:
    out = crucible_cli(exchange, tenant["token"], "apps", "stop", "ap-\x1b[2J[red]x", ok=False)
    assert out.returncode != 0 and "Error" in out.stderr


def _ids_whole(out: str, full_ids: list[str]) -> None:
    assert max((len(line) for line in out.splitlines()), default=0) <= 80, out
    shown = set(SHORT_ID.findall(out))
    for full in full_ids:
        assert f"{full[:3]}{full[-8:]}" in shown, (full, out)


def test_tables_fit_80_columns_and_short_ids_work_as_arguments(
    exchange: Exchange, tenant: dict[str, str]
) -> None:
    token = tenant["token"]

    def js(*args: str) -> object:
        return json.loads(crucible_cli(exchange, token, *args, "--json").stdout)

    calls = js("calls")
    assert isinstance(calls, list)
    _ids_whole(crucible_cli(exchange, token, "calls").stdout, [c["id"] for c in calls])
    apps = js("apps")
    assert isinstance(apps, list)
    _ids_whole(crucible_cli(exchange, token, "apps").stdout, [a["id"] for a in apps])
    _ids_whole(crucible_cli(exchange, token, "bill").stdout, [tenant["app"]])
    hosts = js("hosts")
    assert isinstance(hosts, list)
    agent_host = next(h for h in hosts if h["name"] == "agent-1")
    _ids_whole(crucible_cli(exchange, token, "hosts").stdout, [agent_host["id"]])
    for args in (["statement"], ["statement", "--kind", "apps"], ["statement", "--kind", "calls"]):
        _ids_whole(crucible_cli(exchange, token, *args).stdout, [])
    for args in (["market"], ["reservations"], ["market", "hosts"]):
        _ids_whole(crucible_cli(exchange, token, *args).stdout, [])
    timeline_text = crucible_cli(exchange, token, "call", tenant["ok"]).stdout
    _ids_whole(timeline_text, [])
    assert tenant["ok"] in timeline_text

    # The short ids the tables show are accepted back wherever an id is an argument.
    short_call = tenant["ok"][:3] + tenant["ok"][-8:]
    timeline = json.loads(crucible_cli(exchange, token, "call", short_call, "--json").stdout)
    assert timeline["call_id"] == tenant["ok"]
    short_app = tenant["app"][:3] + tenant["app"][-8:]
    mine = json.loads(crucible_cli(exchange, token, "calls", "--app", short_app, "--json").stdout)
    assert {c["id"] for c in mine} == {tenant["ok"], tenant["failed"]}
    billed = json.loads(crucible_cli(exchange, token, "bill", "--app", short_app, "--json").stdout)
    assert {line["app_id"] for line in billed["lines"]} == {tenant["app"]}
    missing = crucible_cli(exchange, token, "call", "ca-zzzzzzzz", ok=False)
    assert missing.returncode != 0 and "ca-zzzzzzzz" in missing.stderr


def test_host_earnings_fit_80_columns(exchange: Exchange, tenant: dict[str, str]) -> None:
    # The agent's host belongs to the operator's account: its earnings are the admin's.
    admin_token = (exchange.home / "admin-token").read_text().strip()
    wait_for(lambda: exchange.admin.get("/v1/earnings?by=lease")["lines"], 30, "earnings recorded")
    rep = json.loads(crucible_cli(exchange, admin_token, "host", "earnings", "--json").stdout)
    out = crucible_cli(exchange, admin_token, "host", "earnings").stdout
    _ids_whole(out, [x["key"] for x in rep["lines"]] + [x["host_id"] for x in rep["lines"]])
    by_day = crucible_cli(exchange, admin_token, "host", "earnings", "--by", "day").stdout
    _ids_whole(by_day, [x["host_id"] for x in rep["lines"]])
    host_id = rep["lines"][0]["host_id"]
    short_host = host_id[:3] + host_id[-8:]
    mine = json.loads(
        crucible_cli(
            exchange, admin_token, "host", "earnings", "--host", short_host, "--json"
        ).stdout
    )
    assert {x["host_id"] for x in mine["lines"]} == {host_id}


def test_market_tables_fit_80_columns(exchange: Exchange, tenant: dict[str, str]) -> None:
    exchange.start_agent("gpu-1", fake_gpus="1xH100")
    token = tenant["token"]
    made = json.loads(
        crucible_cli(exchange, token, "reserve", "1xH100", "--hours", "1", "--json").stdout
    )
    listed = crucible_cli(exchange, token, "reservations").stdout
    _ids_whole(listed, [made["id"], *made["hosts"]])
    short = made["id"][:3] + made["id"][-8:]
    assert short in listed
    book = crucible_cli(exchange, token, "market").stdout
    _ids_whole(book, [])
    assert "H100" in book
    _ids_whole(crucible_cli(exchange, token, "market", "hosts").stdout, [])
    _ids_whole(crucible_cli(exchange, token, "statement").stdout, [])


def test_logs_of_an_app_that_printed_nothing_say_so(
    exchange: Exchange, tenant: dict[str, str]
) -> None:
    """It printed nothing at all: "no output" and "the wrong app" read the same."""
    t = Transport(exchange.url, tenant["token"], retry_for_s=0)
    try:
        quiet = t.post("/v1/apps", {"name": "quiet"})["id"]
    finally:
        t.close()
    out = crucible_cli(exchange, tenant["token"], "logs", quiet)
    assert out.stdout == ""
    assert f"no log lines from app {quiet}" in out.stderr
