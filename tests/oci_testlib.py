"""A real OCI registry on loopback for tests: Debian's ``docker-registry`` (the CNCF
distribution registry), images the tests build themselves, and a token-auth gateway.

Nothing comes from the internet: layers are tars built here (:func:`layer`), pushed with the
registry's own upload API (:func:`push_image`). :class:`TokenGateway` is a token server and
a bearer-checking front for a registry (and, with ``tamper``, a proxy that corrupts blobs).
:func:`python_rootfs_layers` assembles a Python image from this machine's system Python of
the tests' own minor version (``/usr/bin/python3.X``: the worker's compiled dependencies fit it),
its standard library and the shared libraries it and the worker's compiled dependencies need.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"


def need_registry() -> None:
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip("docker-registry is not installed (scripts/setup dev installs it as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    auth: tuple[str, str] | None = None

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]


@contextmanager
def run_registry(root: Path, *, htpasswd: tuple[str, str] | None = None) -> Iterator[Registry]:
    """Start docker-registry on a free loopback port (with basic auth when ``htpasswd``)."""
    need_registry()
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    auth = ""
    if htpasswd is not None:
        import bcrypt

        user, password = htpasswd
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        (root / "htpasswd").write_text(f"{user}:{hashed}\n")
        auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {root / 'htpasswd'}\n"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth
    )
    log = open(root / "registry.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(config)], stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, _ = http_get(url + "/v2/")
                if status in (200, 401):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "docker-registry did not start: " + (root / "registry.log").read_text()
                )
            time.sleep(0.05)
        yield Registry(url=url, proc=proc, auth=htpasswd)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def http_get(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, target, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# -- building images ------------------------------------------------------------------------
@dataclass
class Entry:
    """One tar member: a file (``data``), directory, symlink, hard link or device."""

    name: str
    data: bytes = b""
    kind: str = "file"  # file | dir | symlink | link | chardev | fifo
    target: str = ""
    mode: int = 0o644


def layer(entries: list[Entry], *, compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.mtime = 1_700_000_000
            if e.kind == "file":
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "link": tarfile.LNKTYPE,
                "chardev": tarfile.CHRTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[e.kind]
            if e.kind == "dir" and e.mode == 0o644:
                info.mode = 0o755
            info.linkname = e.target
            if e.kind == "chardev":
                info.devmajor, info.devminor = 1, 3
            tf.addfile(info)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0) if compress else raw


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(reg_url: str, repo: str, data: bytes, headers: dict[str, str]) -> str:
    digest = sha(data)
    status, hdrs, body = http_get(f"{reg_url}/v2/{repo}/blobs/uploads/", headers, "POST", b"")
    assert status == 202, (status, body)
    loc = urllib.parse.urljoin(reg_url, hdrs["location"])
    loc += ("&" if "?" in loc else "?") + urllib.parse.urlencode({"digest": digest})
    h = dict(headers, **{"Content-Type": "application/octet-stream"})
    status, _, body = http_get(loc, h, "PUT", data)
    assert status == 201, (status, body)
    return digest


def push_image(
    reg: Registry,
    repo: str,
    tag: str,
    layers: list[bytes],
    *,
    env: list[str] | None = None,
    workdir: str = "",
    user: str = "",
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    arch: str = "amd64",
) -> str:
    """Push an image (its layers, config, manifest) under ``repo:tag``; its manifest digest."""
    headers = _auth_headers(reg)
    descs = []
    for data in layers:
        media = LAYER_GZ if data[:2] == b"\x1f\x8b" else LAYER_TAR
        descs.append(
            {
                "mediaType": media,
                "digest": push_blob(reg.url, repo, data, headers),
                "size": len(data),
            }
        )
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": env or ["PATH=/usr/local/bin:/usr/bin:/bin"],
            "WorkingDir": workdir,
            "User": user,
            "Entrypoint": entrypoint,
            "Cmd": cmd,
        },
        "rootfs": {"type": "layers", "diff_ids": []},
    }
    cdata = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": push_blob(reg.url, repo, cdata, headers),
            "size": len(cdata),
        },
        "layers": descs,
    }
    return put_manifest(reg, repo, tag, json.dumps(manifest).encode(), OCI_MANIFEST)


def put_manifest(reg: Registry, repo: str, tag: str, body: bytes, media: str) -> str:
    h = dict(_auth_headers(reg), **{"Content-Type": media})
    status, _, resp = http_get(f"{reg.url}/v2/{repo}/manifests/{tag}", h, "PUT", body)
    assert status == 201, (status, resp)
    return sha(body)


def push_index(reg: Registry, repo: str, tag: str, entries: list[tuple[str, str, int]]) -> str:
    """An index of (manifest digest, architecture, size) entries, all linux."""
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": d,
                "size": n,
                "platform": {"os": "linux", "architecture": a},
            }
            for d, a, n in entries
        ],
    }
    return put_manifest(reg, repo, tag, json.dumps(index).encode(), OCI_INDEX)


def manifest_size(reg: Registry, repo: str, digest: str) -> int:
    status, _, body = http_get(
        f"{reg.url}/v2/{repo}/manifests/{digest}", dict(_auth_headers(reg), Accept=OCI_MANIFEST)
    )
    assert status == 200
    return len(body)


def _auth_headers(reg: Registry) -> dict[str, str]:
    if reg.auth is None:
        return {}
    import base64

    raw = f"{reg.auth[0]}:{reg.auth[1]}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


# -- a token server in front of a registry ------------------------------------------------------
@dataclass
class TokenGateway:
    """Serves ``/token`` (basic credentials → a bearer token) and forwards ``/v2/...`` to the
    registry only with a valid bearer token; ``tamper`` flips a byte of every blob it relays;
    while ``hold`` is set and not released, blobs trickle out a byte at a time (a pull in
    progress).
    Records every Authorization header it saw and the paths asked."""

    upstream: str
    user: str = "alice"
    password: str = "s3cret-pw"
    tamper: bool = False
    require_token: bool = True
    hold: threading.Event | None = None
    tokens: set[str] = field(default_factory=set)
    paths: list[str] = field(default_factory=list)
    url: str = ""
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> TokenGateway:
        gw = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                gw.paths.append(self.path)
                if self.path.startswith("/token"):
                    return self._token()
                token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if gw.require_token and token not in gw.tokens:
                    self.send_response(401)
                    realm = f"{gw.url}/token"
                    self.send_header(
                        "WWW-Authenticate", f'Bearer realm="{realm}",service="test-registry"'
                    )
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                accept = self.headers.get("Accept")
                status, hdrs, body = http_get(
                    gw.upstream + self.path, {"Accept": accept} if accept else {}
                )
                if gw.tamper and "/blobs/" in self.path and body:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                self.send_response(status)
                if "content-type" in hdrs:
                    self.send_header("Content-Type", hdrs["content-type"])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                hold = gw.hold
                if hold is not None and "/blobs/" in self.path:
                    # A byte now and then (the puller's read timeout never fires) until
                    # released: the pull is in progress for as long as the test wants.
                    while body and not hold.wait(0.5):
                        self.wfile.write(body[:1])
                        self.wfile.flush()
                        body = body[1:]
                self.wfile.write(body)
                return None

            def _token(self) -> None:
                import base64

                want = "Basic " + base64.b64encode(f"{gw.user}:{gw.password}".encode()).decode()
                if self.headers.get("Authorization") != want:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                token = secrets.token_hex(16)
                gw.tokens.add(token)
                body = json.dumps({"token": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


# -- a Python image from this machine -------------------------------------------------------
PY = f"python3.{sys.version_info[1]}"
SYSTEM_PYTHON = f"/usr/bin/{PY}"
_STDLIB_SKIP = {"test", "idlelib", "tkinter", "ensurepip", "lib2to3", "turtledemo", "pydoc_data"}


def _ldd(paths: list[str]) -> set[str]:
    libs: set[str] = set()
    for i in range(0, len(paths), 200):
        out = subprocess.run(["ldd", *paths[i : i + 200]], capture_output=True, text=True).stdout
        for line in out.splitlines():
            line = line.strip()
            if "=>" in line:
                target = line.split("=>", 1)[1].split("(")[0].strip()
            else:
                target = line.split("(")[0].strip()
            if target.startswith("/"):
                libs.add(target)
    return libs


def python_rootfs_layers(extra_so_roots: list[str]) -> list[bytes]:
    """Two uncompressed layers: shared libraries, then the system Python and its standard
    library."""
    stdlib = Path(f"/usr/lib/{PY}")
    so_files = [str(p) for p in stdlib.glob("lib-dynload/*.so")]
    for root in extra_so_roots:
        so_files += [str(p) for p in Path(root).rglob("*.so*") if p.is_file()]
    libs = _ldd([SYSTEM_PYTHON, *so_files]) | {"/lib64/ld-linux-x86-64.so.2"}
    lib_entries = []
    dirs: set[str] = set()
    for lib in sorted(libs):
        if not os.path.exists(lib) or "/.venv/" in lib or "/site-packages/" in lib:
            continue
        name = lib.lstrip("/")
        parent = os.path.dirname(name)
        if parent not in dirs:
            dirs.add(parent)
            lib_entries.append(Entry(parent, kind="dir"))
        lib_entries.append(Entry(name, Path(os.path.realpath(lib)).read_bytes(), mode=0o755))
    py_entries = [
        Entry("usr/bin", kind="dir"),
        Entry(f"usr/bin/{PY}", Path(SYSTEM_PYTHON).read_bytes(), mode=0o755),
        Entry("usr/bin/python3", kind="symlink", target=PY),
        Entry("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234::/home/app:/bin/sh\n"),
        Entry("etc/group", b"root:x:0:\napp:x:1234:\n"),
    ]
    for path in sorted(stdlib.rglob("*")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in _STDLIB_SKIP or rel.parts[0].startswith("config-"):
            continue
        name = f"usr/lib/{PY}/{rel.as_posix()}"
        if path.is_symlink():
            py_entries.append(Entry(name, kind="symlink", target=os.readlink(path)))
        elif path.is_dir():
            py_entries.append(Entry(name, kind="dir"))
        elif path.is_file():
            py_entries.append(Entry(name, path.read_bytes(), mode=path.stat().st_mode & 0o777))
    return [layer(lib_entries, compress=False), layer(py_entries, compress=False)]
