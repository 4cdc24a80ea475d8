"""The registry, token realm and redirects of an image are named by whoever chose the image,
and the agent reaches them with the host's network: outside the registries the operator
configured, only HTTPS at public addresses (the probe of this stop made the agent fetch a
loopback-only service's token for a tenant's registry, and follow a redirect to the
exchange's own port)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from crucible.agent.oci import RegistryConfig
from crucible.agent.oci.registry import RegistryClient
from crucible.errors import ImagePullError
from crucible.protocol.image_refs import parse_image_ref


@contextmanager
def serve(answer: Any) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server answering every GET with ``answer(path)`` → (status,
    headers, body); yields its host:port and the paths asked."""
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            status, headers, body = answer(self.path)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def internal() -> Any:
    """A loopback-only service with a token-shaped answer (a metadata or admin endpoint)."""
    return serve(lambda path: (200, {}, b'{"token": "INTERNAL-SECRET"}'))


def pull(registry: str, repo: str, config: RegistryConfig) -> None:
    client = RegistryClient(parse_image_ref(f"{registry}/{repo}:1"), config)
    client.manifest("1")


def test_a_token_realm_on_another_loopback_port_is_not_followed() -> None:
    with internal() as (inside, inside_seen):

        def registry(path: str) -> tuple[int, dict[str, str], bytes]:
            realm = f'Bearer realm="http://{inside}/token",service="x"'
            return 401, {"WWW-Authenticate": realm}, b""

        with serve(registry) as (reg, reg_seen):
            config = RegistryConfig(insecure=frozenset({reg}), timeout_s=5)
            with pytest.raises(ImagePullError, match="plain-HTTP URL") as exc:
                pull(reg, "realm", config)
            assert "INTERNAL" not in str(exc.value)
            # Over HTTPS it is refused too: the address is not public.
            https_realm = f'Bearer realm="https://{inside}/token"'

            def registry2(path: str) -> tuple[int, dict[str, str], bytes]:
                return 401, {"WWW-Authenticate": https_realm}, b""

        with serve(registry2) as (reg2, _):
            config = RegistryConfig(insecure=frozenset({reg2}), timeout_s=5)
            with pytest.raises(ImagePullError, match="not a public address"):
                pull(reg2, "realm", config)
    assert inside_seen == []  # never reached
    assert reg_seen == ["/v2/realm/manifests/1"]


def test_redirects_to_the_host_or_link_local_are_not_followed() -> None:
    with internal() as (inside, inside_seen):
        targets = iter([f"http://{inside}/healthz", "https://169.254.169.254/latest/meta-data"])

        def registry(path: str) -> tuple[int, dict[str, str], bytes]:
            return 302, {"Location": next(targets)}, b""

        with serve(registry) as (reg, _):
            config = RegistryConfig(insecure=frozenset({reg}), timeout_s=5)
            with pytest.raises(ImagePullError, match="plain-HTTP URL"):
                pull(reg, "redir", config)
            with pytest.raises(ImagePullError, match=r"169\.254\.169\.254, which is not a public"):
                pull(reg, "redir", config)
    assert inside_seen == []


def test_a_registry_the_operator_did_not_configure_must_be_public() -> None:
    """A tenant naming 127.0.0.1:PORT (or a LAN address) as its registry reaches nothing."""
    with internal() as (inside, inside_seen):
        for ref_host in (inside, "10.1.2.3:5000", "localhost:5000"):
            with pytest.raises(ImagePullError, match="not a public address"):
                pull(ref_host, "x", RegistryConfig(timeout_s=5))
    assert inside_seen == []


def test_configured_registries_are_trusted_by_host_and_port() -> None:
    config = RegistryConfig.parse(
        "docker.io=http://127.0.0.1:5000", "127.0.0.1:6000, r.local, bad:port"
    )
    from urllib.parse import urlsplit

    assert config.trusts(urlsplit("http://127.0.0.1:5000/v2/"))  # the mirror
    assert config.trusts(urlsplit("http://127.0.0.1:6000/token"))
    assert not config.trusts(urlsplit("http://127.0.0.1:6001/token"))  # another port
    assert config.trusts(urlsplit("https://r.local:8443/v2/"))  # a host named whole
    assert not config.trusts(urlsplit("https://bad/v2/"))
