"""`crucible secret rotate` (POST /v1/secrets/rotate) re-seals every secret under the current
key, so the old key can go; it is audited (an operator's action on every tenant's secrets was
not; ops2 probe)."""

from __future__ import annotations

import base64
import os

from sqlalchemy import select

from crucible.protocol.accounts import Scope
from crucible.server.services import secrets as secrets_svc
from crucible.server.store.tables import secrets

from server_testlib import MakeServer


def _key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_rotation_reseals_every_secret_and_is_audited(make_server: MakeServer) -> None:
    old, new = _key(), _key()
    before = make_server(secrets_keys=old)
    alice = before.tenant("alice").token
    before.ok("POST", "/v1/secrets", token=alice, json={"name": "db", "values": {"PW": "one"}})

    during = make_server(secrets_keys=f"{new},{old}")  # the new key first, the old kept
    admin = during.tenant("ops", Scope.ADMIN).token
    r = during.request("POST", "/v1/secrets/rotate", token=alice)
    assert r.status_code == 403, r.text
    done = during.ok("POST", "/v1/secrets/rotate", token=admin)
    assert done["resealed"] == 1 and done["key_id"] == during.state.secret_box.current
    [entry] = during.ok("GET", "/v1/audit?action=secrets.rotate", token=admin)["entries"]
    assert entry["target"] == done["key_id"] and entry["detail"] == {"resealed": 1}

    after = make_server(secrets_keys=new)  # the old key gone: the secret still opens
    with after.state.engine.connect() as conn:
        [row] = conn.execute(select(secrets.c.account_id, secrets.c.key_id, secrets.c.ciphertext))
    opened = after.state.secret_box.open(
        row.key_id, row.ciphertext, secrets_svc._context(row.account_id, "db")
    )
    assert b"one" in opened
    assert during.ok("POST", "/v1/secrets/rotate", token=admin)["resealed"] == 0  # again
