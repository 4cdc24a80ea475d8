"""A client for OCI distribution registries (the ``/v2/`` API): manifests and blobs.

Authentication follows the registry's ``WWW-Authenticate`` challenge: anonymous first, then
``Bearer`` (a token from the realm the registry names, with the credentials if any, for
``repository:NAME:pull``) or ``Basic``. Credentials and tokens are sent only to the registry
and its token realm, never logged and never put in an error message.

Every manifest and blob is checked against its sha256 digest as it streams in; a mismatch is
:class:`~crucible.errors.ImageDigestError` and nothing of it is kept.

The registry, its token realm and every redirect are named by whoever chose the image (a
tenant), and the agent reaches them with the host's own network: so, except for the hosts the
operator configured (mirrors and plain-HTTP registries), each is reached only over HTTPS and
only at public addresses, checked on the address actually connected to (no loopback, private,
link-local or reserved address: not the host's services, its LAN, a cloud's metadata service
or the exchange's own port).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import ipaddress
import json
import os
import re
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crucible.errors import (
    ImageDigestError,
    ImageNotFoundError,
    ImagePullError,
    ImageTooLargeError,
)
from crucible.protocol.image_refs import DOCKER_HUB, ImageRef

__all__ = ["MANIFEST_TYPES", "RegistryAuth", "RegistryClient", "RegistryConfig"]

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_MAX_MANIFEST_BYTES = 4 << 20
_MAX_REDIRECTS = 5
_CHUNK = 1 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for one registry (from a crucible Secret). ``repr`` never shows them."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        return f"RegistryAuth(username={self.username!r}, password=***)"

    def basic_header(self) -> str:
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()


@dataclass(frozen=True)
class RegistryConfig:
    """Where registries are (from the settings): mirrors by registry name, registries reached
    over plain HTTP, and the timeout of each request."""

    mirrors: dict[str, str] = field(default_factory=dict)
    insecure: frozenset[str] = frozenset()
    timeout_s: float = 30.0

    @classmethod
    def parse(
        cls, mirrors: str = "", insecure: str = "", timeout_s: float = 30.0
    ) -> RegistryConfig:
        """From the settings' strings (``docker.io=http://127.0.0.1:5000,...`` and
        ``127.0.0.1:5000,...``); raises ``ValueError`` naming a malformed entry."""
        table: dict[str, str] = {}
        for item in (m.strip() for m in mirrors.split(",")):
            if not item:
                continue
            name, sep, url = item.partition("=")
            parsed = urllib.parse.urlsplit(url.strip())
            if not sep or parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError(
                    f"registry mirror {item!r} must read REGISTRY=URL, "
                    "e.g. docker.io=http://127.0.0.1:5000"
                )
            table[name.strip()] = url.strip().rstrip("/")
        hosts = frozenset(h.strip() for h in insecure.split(",") if h.strip())
        return cls(mirrors=table, insecure=hosts, timeout_s=timeout_s)

    def trusts(self, parts: urllib.parse.SplitResult) -> bool:
        """Whether ``parts`` is a registry the operator configured (a mirror, a plain-HTTP
        registry: reached at whatever address it has, private or loopback included). An
        entry with a port trusts that port only; one without, the whole host."""
        host, port = (parts.hostname or "").lower(), parts.port
        for entry in [*self.mirrors.values(), *(f"//{h}" for h in self.insecure)]:
            named = urllib.parse.urlsplit(entry)
            try:
                if (named.hostname or "").lower() == host and named.port in (None, port):
                    return True
            except ValueError:  # an entry with a malformed port names nothing
                continue
        return False

    def base_url(self, registry: str) -> str:
        """The URL a registry's ``/v2/`` API is under."""
        if registry in self.mirrors:
            return self.mirrors[registry]
        host = "registry-1.docker.io" if registry == DOCKER_HUB else registry
        scheme = "http" if registry in self.insecure or host in self.insecure else "https"
        return f"{scheme}://{host}"


class _Response:
    def __init__(self, conn: http.client.HTTPConnection, resp: http.client.HTTPResponse) -> None:
        self.conn = conn
        self.resp = resp
        self.status = resp.status
        self.headers = resp.headers

    def read(self, limit: int) -> bytes:
        data = self.resp.read(limit + 1)
        if len(data) > limit:
            self.close()
            raise ImagePullError(f"a registry response is larger than {limit >> 20} MiB")
        return data

    def close(self) -> None:
        self.resp.close()  # the response holds the socket too: close both
        self.conn.close()


class RegistryClient:
    """Pulls from one repository of one registry. Not thread-safe: one per pull."""

    def __init__(
        self, ref: ImageRef, config: RegistryConfig, auth: RegistryAuth | None = None
    ) -> None:
        self.ref = ref
        self.config = config
        self.auth = auth
        self.base = config.base_url(ref.registry)
        self._authorization: str | None = None
        self.bytes_downloaded = 0

    # -- manifests ----------------------------------------------------------------------------
    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest or index, by tag or digest. A digest
        reference is verified against the body."""
        resp = self._get(
            f"/v2/{self.ref.repository}/manifests/{reference}", accept=", ".join(MANIFEST_TYPES)
        )
        try:
            body = resp.read(_MAX_MANIFEST_BYTES)
        finally:
            resp.close()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise ImageDigestError(
                f"the manifest {self._where(reference)} does not hash to its digest "
                f"(got {digest}): the registry or something between sent other bytes"
            )
        media = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if not media or media not in MANIFEST_TYPES:
            with contextlib.suppress(ValueError, AttributeError):
                media = str(json.loads(body).get("mediaType") or media)
        return body, media, digest

    # -- blobs --------------------------------------------------------------------------------
    def blob_to_file(
        self,
        digest: str,
        target: Path,
        *,
        max_bytes: int,
        on_bytes: Callable[[int], None] | None = None,
    ) -> int:
        """Stream blob ``digest`` into ``target`` (created), checking its sha256 and its size
        against ``max_bytes`` as it arrives. Returns its size. On any failure ``target`` is
        removed and the error says which blob."""
        resp = self._get(f"/v2/{self.ref.repository}/blobs/{digest}")
        h = hashlib.sha256()
        size = 0
        try:
            with open(target, "wb") as f:
                while True:
                    chunk = resp.resp.read(_CHUNK)
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > max_bytes:
                        raise ImageTooLargeError(
                            f"image {self.ref} is larger than this host's limit of "
                            f"{max_bytes >> 20} MiB (CRUCIBLE_OCI_IMAGE_MAX_MIB)"
                        )
                    h.update(chunk)
                    f.write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            _unlink(target)
            raise ImagePullError(
                f"downloading blob {digest[:19]} of {self.ref} failed: {type(exc).__name__}"
            ) from None
        except BaseException:
            _unlink(target)
            raise
        finally:
            resp.close()
        self.bytes_downloaded += size
        got = "sha256:" + h.hexdigest()
        if got != digest:
            _unlink(target)
            raise ImageDigestError(
                f"blob {digest} of {self.ref} does not hash to its digest (got {got}): the "
                "registry or something between sent other bytes; nothing of it was used"
            )
        return size

    # -- HTTP ---------------------------------------------------------------------------------
    def _where(self, reference: str) -> str:
        return f"{self.ref.registry}/{self.ref.repository}@{reference}"

    def _get(self, path: str, accept: str | None = None) -> _Response:
        """GET ``path`` under the registry, answering one auth challenge and following
        redirects (a blob may live on a storage host: no credentials go there)."""
        url = self.base + path
        for attempt in range(2):
            resp = self._request(url, accept, self._authorization, redirects=_MAX_REDIRECTS)
            if resp.status == 401 and attempt == 0:
                challenge = resp.headers.get("WWW-Authenticate") or ""
                resp.close()
                self._authorization = self._answer(challenge)
                continue
            break
        if resp.status == 200:
            return resp
        resp.close()
        if resp.status == 404:
            kind = "manifest" if "/manifests/" in path else "blob"
            what = path.rsplit("/", 1)[1]
            raise ImageNotFoundError(
                f"image {self.ref}: the registry has no {kind} {what!r} "
                f"(check the repository name and the tag)"
            )
        if resp.status in (401, 403):
            how = "with the credentials given" if self.auth else "anonymously"
            raise ImagePullError(
                f"registry {self.ref.registry} refused to serve {self.ref.repository} {how} "
                f"(HTTP {resp.status}); pass the right credentials: "
                "Image.from_registry(ref, secret=crucible.Secret.from_name(NAME)) with "
                "REGISTRY_USERNAME and REGISTRY_PASSWORD"
            )
        raise ImagePullError(f"registry {self.ref.registry} answered HTTP {resp.status} for {path}")

    def _answer(self, challenge: str) -> str | None:
        scheme, _, rest = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(rest))
        if scheme.lower() == "basic":
            if self.auth is None:
                return None
            return self.auth.basic_header()
        if scheme.lower() != "bearer" or "realm" not in params:
            return None
        query = {"scope": params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if "service" in params:
            query["service"] = params["service"]
        realm = params["realm"]
        url = realm + ("&" if "?" in realm else "?") + urllib.parse.urlencode(query)
        cred = self.auth.basic_header() if self.auth else None
        resp = self._request(url, None, cred, redirects=_MAX_REDIRECTS)
        try:
            if resp.status in (401, 403):
                raise ImagePullError(
                    f"registry {self.ref.registry}'s token service refused "
                    f"{'the credentials given' if self.auth else 'an anonymous pull'} "
                    f"for {self.ref.repository} (HTTP {resp.status})"
                )
            if resp.status != 200:
                raise ImagePullError(
                    f"registry {self.ref.registry}'s token service answered HTTP {resp.status}"
                )
            try:
                body: Any = json.loads(resp.read(1 << 20))
                token = body.get("token") or body.get("access_token")
            except (ValueError, AttributeError):
                token = None
        finally:
            resp.close()
        if not isinstance(token, str) or not token:
            raise ImagePullError(f"registry {self.ref.registry}'s token service sent no token")
        return f"Bearer {token}"

    def _request(
        self, url: str, accept: str | None, authorization: str | None, *, redirects: int
    ) -> _Response:
        origin = _origin(url)
        for _ in range(redirects + 1):
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ImagePullError(f"registry {self.ref.registry} sent an unusable URL")
            conn = self._connection(parts)
            headers = {"User-Agent": "crucible-agent"}
            if accept:
                headers["Accept"] = accept
            # Credentials go only to the origin they were meant for.
            if authorization and _origin(url) == origin:
                headers["Authorization"] = authorization
            target = parts.path + (f"?{parts.query}" if parts.query else "")
            try:
                if conn.sock is None and not self.config.trusts(parts):
                    conn.sock = self._public_socket(parts)
                conn.request("GET", target or "/", headers=headers)
                resp = conn.getresponse()
            except ImagePullError:
                conn.close()
                raise
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                conn.close()
                raise ImagePullError(
                    f"registry {self.ref.registry} is unreachable at {parts.scheme}://"
                    f"{parts.netloc} ({type(exc).__name__}: {exc}); check the name, the "
                    "network, or CRUCIBLE_OCI_REGISTRY_MIRRORS / CRUCIBLE_OCI_INSECURE_REGISTRIES"
                ) from None
            if resp.status in (301, 302, 303, 307, 308) and resp.headers.get("Location"):
                url = urllib.parse.urljoin(url, resp.headers["Location"])
                resp.read()
                resp.close()
                conn.close()
                continue
            return _Response(conn, resp)
        raise ImagePullError(f"registry {self.ref.registry} redirected too many times")

    def _connection(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        host = parts.hostname or ""
        if parts.scheme != "https" and not self.config.trusts(parts):
            raise ImagePullError(
                f"registry {self.ref.registry} sent the agent to a plain-HTTP URL "
                f"(http://{parts.netloc}): only the registries the operator lists in "
                "CRUCIBLE_OCI_INSECURE_REGISTRIES are reached over HTTP"
            )
        if parts.scheme == "https":
            return http.client.HTTPSConnection(
                host,
                parts.port,
                timeout=self.config.timeout_s,
                context=ssl.create_default_context(),
            )
        return http.client.HTTPConnection(host, parts.port, timeout=self.config.timeout_s)

    def _public_socket(self, parts: urllib.parse.SplitResult) -> socket.socket:
        """A connection to a public address of ``parts``' host (TLS, with its name checked):
        the address checked is the one connected to, so a name that resolves elsewhere the
        second time (DNS rebinding) gains nothing."""
        host = parts.hostname or ""
        port = parts.port or 443
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ImagePullError(
                f"registry {self.ref.registry}: {host} does not resolve ({exc}); check the "
                "image's name"
            ) from None
        addresses = [str(info[4][0]) for info in infos]
        blocked = [a for a in addresses if not _public(a)]
        if blocked or not addresses:
            raise ImagePullError(
                f"registry {self.ref.registry} sent the agent to {host}, which is not a public "
                "address (loopback, private, link-local or reserved): an image's registry, "
                "token service and redirects must be on the internet. An operator reaches a "
                "registry of its own by naming it in CRUCIBLE_OCI_REGISTRY_MIRRORS or "
                "CRUCIBLE_OCI_INSECURE_REGISTRIES"
            )
        sock = socket.create_connection((addresses[0], port), timeout=self.config.timeout_s)
        try:
            return ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise


def _public(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
