"""An exchange behind TLS with a CA of the operator's own: the agent trusts it through
SSL_CERT_FILE, and so must its containers' workers, which connect to the same URL (ops2 F6:
they were given nothing, could not verify the certificate and never became ready)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import app_ca_bundle
import certifi
import pytest
from sandbox_testlib import SANDBOX_ENV, bwrap_or_skip

from harness import Exchange


def _bundle(tmp_path: Path) -> tuple[Path, str]:
    # A real PEM bundle (the agent's own HTTP client loads it): certifi's, copied.
    path = tmp_path / "operator-ca.pem"
    shutil.copyfile(certifi.where(), path)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("runtime", ["bwrap", "process"])
def test_containers_trust_the_ca_bundle_the_agent_trusts(tmp_path: Path, runtime: str) -> None:
    if runtime == "bwrap":
        bwrap_or_skip()
    bundle, digest = _bundle(tmp_path)
    env = {**SANDBOX_ENV} if runtime == "bwrap" else {"CRUCIBLE_RUNTIME": "process"}
    ex = Exchange(tmp_path, f"sqlite:///{tmp_path / 'store.db'}", SSL_CERT_FILE=str(bundle), **env)
    ex.start_server()
    try:
        ex.start_agent("host-a")
        client = ex.client(ex.owner_token("ca"))
        with app_ca_bundle.app.run(client=client):
            path, seen = app_ca_bundle.trusted_bundle.remote()
        client.close()
    finally:
        ex.close()
    assert seen == digest
    if runtime == "bwrap":
        assert path == "/crucible/run/ca.pem"  # a copy in the sandbox, not a host path
