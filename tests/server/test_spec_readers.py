"""A function's spec is read once per version into one typed object (issue 15, item 2).

Every reader in the server takes it from services/function_specs.SPECS with the row's
``spec_rev``: an AST scan of src/crucible/server fails on code that reads the stored JSON by
hand, and each reader is shown to see a new version written by another process (a store
write that bumps ``spec_rev``) while reading an unchanged version parses nothing again."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, select, update

import crucible.server
from crucible.protocol.common import ErrorInfo
from crucible.protocol.secrets import SecretCreate
from crucible.server.auth import Principal
from crucible.server.blobs import LocalBlobStore
from crucible.server.secretbox import SecretBox
from crucible.server.services import calls as calls_svc
from crucible.server.services.apps import get_function_row
from crucible.server.services.blobs import grant_blob
from crucible.server.services.containers import load_container_facts
from crucible.server.services.function_specs import SPECS
from crucible.server.services.retention import _referenced
from crucible.server.services.secrets import (
    env_for_container,
    put_secret,
    registry_auth_for_container,
)
from crucible.server.store.tables import functions

from server_testlib import MakeServer, World

SERVER = Path(crucible.server.__file__).parent
HOME = "services/function_specs.py"  # the one module that reads the stored JSON


# --- the scan -----------------------------------------------------------------------------


def _is_spec(node: ast.AST) -> bool:
    """``x.spec`` (any row's or object's), also as ``(x.spec or {})``."""
    if isinstance(node, ast.BoolOp):
        return any(_is_spec(v) for v in node.values)
    return isinstance(node, ast.Attribute) and node.attr == "spec"


def raw_spec_reads(source: str) -> list[str]:
    """What in ``source`` reads a function's spec JSON by hand: ``functions.c.spec`` or the
    whole row (``select(functions)``) selected, ``x.spec[...]`` or ``x.spec.get(...)``,
    ``**x.spec``, or ``FunctionCreate.model_validate*`` (a spec validated outside SPECS)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        where = f"line {getattr(node, 'lineno', '?')}"
        if (
            isinstance(node, ast.Attribute)
            and node.attr == "spec"
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "c"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "functions"
        ):
            found.append(f"{where}: functions.c.spec selected")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "select"
            and any(isinstance(a, ast.Name) and a.id == "functions" for a in node.args)
        ):
            found.append(f"{where}: select(functions) (its spec JSON too)")
        elif isinstance(node, ast.Subscript) and _is_spec(node.value):
            found.append(f"{where}: spec[...]")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and _is_spec(node.func.value)
        ):
            found.append(f"{where}: spec.get(...)")
        elif isinstance(node, ast.keyword) and node.arg is None and _is_spec(node.value):
            found.append(f"{where}: **spec")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("model_validate")
            and isinstance(node.value, ast.Name)
            and node.value.id == "FunctionCreate"
        ):
            found.append(f"{where}: FunctionCreate.{node.attr}")
    return sorted(found, key=lambda f: int(f.split(":")[0].removeprefix("line ")))


def test_the_scan_finds_each_way_of_reading_the_json_by_hand() -> None:
    source = """
rows = select(functions.c.id, functions.c.spec)
every = select(functions).where(functions.c.app_id == a)
t = float(row.spec["timeout_s"])
web = fn.spec.get("web")
names = (row.spec or {}).get("secrets")
info = FunctionInfo(**row.spec)
spec = FunctionCreate.model_validate(raw)
fine = [schedules.c.spec, fn.spec.timeout_s, PodSpec.model_validate(row.spec)]
count = select(func.count()).select_from(functions)
"""
    assert [f.split(": ", 1)[1] for f in raw_spec_reads(source)] == [
        "functions.c.spec selected",
        "select(functions) (its spec JSON too)",
        "spec[...]",
        "spec.get(...)",
        "spec.get(...)",
        "**spec",
        "FunctionCreate.model_validate",
    ]


def test_nothing_in_the_server_reads_a_function_spec_but_the_spec_cache() -> None:
    offenders: list[str] = []
    for path in sorted(SERVER.rglob("*.py")):
        rel = path.relative_to(SERVER).as_posix()
        if rel == HOME or "/migrations/" in f"/{rel}":
            continue
        offenders += [f"{rel} {f}" for f in raw_spec_reads(path.read_text())]
    assert offenders == [], (
        "read the function's spec through services/function_specs.SPECS (select spec_rev "
        "with the row), not from its JSON:\n" + "\n".join(offenders)
    )
    # The home module is the one that still reads it (the scan is not vacuous).
    assert raw_spec_reads((SERVER / HOME).read_text())


# --- each reader sees a new version --------------------------------------------------------


def redefine(conn: Connection, function_id: str, **changes: Any) -> None:
    """What another process's redeploy does to the store: a new spec, a new version."""
    spec = dict(
        conn.execute(select(functions.c.spec).where(functions.c.id == function_id)).scalar_one()
    )
    spec.update(changes)
    conn.execute(
        update(functions)
        .where(functions.c.id == function_id)
        .values(spec=spec, spec_rev=functions.c.spec_rev + 1)
    )


def test_a_new_version_is_seen_by_each_reader_and_an_unchanged_one_is_not_parsed_again(
    world: World, tmp_path: Path
) -> None:
    fid = world.function("f", timeout_s=60.0, max_retries=0)
    cid = world.container(fid)
    box = SecretBox([os.urandom(32)])
    store = LocalBlobStore(tmp_path / "blobs")
    other_bundle = "b" * 64
    with world.engine.begin() as conn:
        put_secret(conn, box, world.principal, SecretCreate(name="tok", values={"K": "v"}), 1)
        login = {"REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p"}
        put_secret(conn, box, world.principal, SecretCreate(name="reg", values=login), 1)
        grant_blob(conn, world.account_id, other_bundle, 1, world.now_ms)
        call_id = world.submit(conn, fid, 1)[0]
        calls_svc.claim_inputs(conn, cid, fid, 1, 60.0, world.now_ms, skip_locked=False)

    def read_all(conn: Connection) -> dict[str, Any]:
        facts = load_container_facts(conn, cid)
        return {
            "timeout_s": get_function_row(conn, world.principal, fid).spec.timeout_s,
            "facts": (facts.timeout_s, facts.retries.max_retries),
            "secrets": env_for_container(conn, box, cid).env,
            "registry": registry_auth_for_container(conn, box, cid).env,
            "blobs": _referenced(conn, store, [world.bundle, other_bundle]),
        }

    with world.engine.begin() as conn:
        first = read_all(conn)
        parsed = SPECS.parsed
        assert read_all(conn) == first and SPECS.parsed == parsed  # read from the cache
    assert first == {
        "timeout_s": 60.0,
        "facts": (60.0, 0),
        "secrets": {},
        "registry": {},
        "blobs": {world.bundle},
    }
    with world.engine.begin() as conn:
        code = {"bundle": other_bundle, "module": "m", "qualname": "f"}
        redefine(
            conn,
            fid,
            timeout_s=120.0,
            retries={"max_retries": 2, "initial_delay_s": 1.0},
            secrets=["tok"],
            code=code,
            image={"registry": "docker.io/library/python:3.12-slim", "registry_secret": "reg"},
        )
    with world.engine.begin() as conn:
        assert read_all(conn) == {
            "timeout_s": 120.0,
            "facts": (120.0, 2),
            "secrets": {"K": "v"},
            "registry": login,
            "blobs": {other_bundle},
        }
        assert SPECS.parsed == parsed + 1  # the new version, once
        # The server's deadline backstop retries by the new version's policy (0 before).
        calls_svc.record_timeout(
            conn, call_id, ErrorInfo(code="timeout", message="late"), world.now_ms + 61_000
        )
        assert calls_svc.get_call(conn, world.principal, call_id).state == "queued"


def test_a_crashed_container_requeues_by_the_new_version_s_retries(world: World) -> None:
    fid = world.function("g", max_retries=0)
    cid = world.container(fid)
    with world.engine.begin() as conn:
        [call_id] = world.submit(conn, fid, 1)
        calls_svc.claim_inputs(conn, cid, fid, 1, 60.0, world.now_ms, skip_locked=False)
        assert get_function_row(conn, world.principal, fid).spec.retries.max_retries == 0
        redefine(conn, fid, retries={"max_retries": 1, "initial_delay_s": 0.0})
        calls_svc.requeue_calls_of_container(
            conn, cid, world.now_ms + 10, crashed=True, message="OOM", max_infra_requeues=5
        )
        assert calls_svc.get_call(conn, world.principal, call_id).state == "queued"


# --- through the API, a redeploy through another replica --------------------------------------


def test_readers_behind_the_api_see_a_function_registered_again_through_another_replica(
    make_server: MakeServer,
) -> None:
    """A deploying version's function is registered again through a second replica (a web
    endpoint now, a schedule every 2 minutes): the first replica, which had read version 1,
    activates it with the new schedule and shows the endpoint."""
    first, second = make_server(), make_server()
    alice = first.tenant("alice")
    bundle = first.put_blob(alice.token)
    started = first.ok("POST", "/v1/deployments", token=alice.token, json={"name": "site"})
    app = started["app_id"]
    code = {"bundle": bundle, "module": "m", "qualname": "f"}
    v1 = {"name": "f", "code": code, "schedule": {"kind": "period", "period_s": 60}}
    [made] = first.ok(
        "POST", f"/v1/apps/{app}/functions", token=alice.token, json={"functions": [v1]}
    )
    with first.state.engine.connect() as conn:
        owner = Principal(alice.account_id, "user")
        assert get_function_row(conn, owner, made["id"]).spec.web is None
    v2 = {
        **v1,
        "schedule": {"kind": "period", "period_s": 120},
        "web": {"kind": "fastapi_endpoint", "method": "GET", "public": False},
    }
    second.ok("POST", f"/v1/apps/{app}/functions", token=alice.token, json={"functions": [v2]})
    info = first.ok(
        "POST", "/v1/deployments/site/activate", token=alice.token, json={"app_id": app}
    )
    assert [s["schedule"] for s in info["schedules"]] == ["every 120 s"]
    shown = first.ok("GET", "/v1/deployments/site/functions/f", token=alice.token)
    assert shown["web"]["kind"] == "fastapi_endpoint" and shown["web_url"].endswith("/site/f/")
