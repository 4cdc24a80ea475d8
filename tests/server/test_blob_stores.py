"""Both blob stores behave the same: the local directory and an S3-compatible object store
(moto's real S3-protocol server on loopback), directly and through the blob routes."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from crucible.errors import Error, InvalidRequestError
from crucible.server.blobs import BlobStore, LocalBlobStore, open_blob_store
from crucible.settings import load_settings

from server_testlib import MakeServer, ServerUnderTest

KEYS = {"s3_access_key_id": "test", "s3_secret_access_key": "test", "s3_region": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    boto3.client(
        "s3",
        endpoint_url=url,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket="blobs")
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    endpoint = request.getfixturevalue("s3_endpoint")
    settings = load_settings(
        environ={},
        home=str(tmp_path),
        blob_store=f"s3://blobs/t-{tmp_path.name}",
        s3_endpoint_url=endpoint,
        **KEYS,
    )
    return open_blob_store(settings)


def test_put_get_exists_size_adopt(store: BlobStore) -> None:
    data = b"hello blobs" * 1000
    sha = hashlib.sha256(data).hexdigest()
    assert not store.exists(sha)
    assert store.put(data) == sha and store.put(data, sha) == sha  # idempotent
    assert store.exists(sha) and store.get(sha) == data and store.size(sha) == len(data)
    with pytest.raises(InvalidRequestError, match="hashes to"):
        store.put(b"other", sha)
    staged = store.staging / ".upload-test"
    staged.write_bytes(b"staged bytes")
    staged_sha = hashlib.sha256(b"staged bytes").hexdigest()
    store.adopt(staged, staged_sha)
    assert store.get(staged_sha) == b"staged bytes"


def test_bad_blob_store_urls_are_refused(tmp_path: Path) -> None:
    for url in ("ftp://x/y", "s3://", "/var/blobs"):
        with pytest.raises(Error, match="CRUCIBLE_BLOB_STORE"):
            open_blob_store(load_settings(environ={}, home=str(tmp_path), blob_store=url))


def test_the_blob_routes_on_s3(make_server: MakeServer, s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    overrides: dict[str, Any] = {
        "blob_store": "s3://blobs/exchange",
        "s3_endpoint_url": s3_endpoint,
        **KEYS,
    }
    server = make_server(**overrides)
    alice, bob = server.tenant("alice"), server.tenant("bob")
    data = b"a code bundle" * 5000
    sha = server.put_blob(alice.token, data)
    assert server.request("GET", f"/v1/blobs/{sha}", token=alice.token).content == data
    # Granted per account, as with the local store.
    assert server.request("GET", f"/v1/blobs/{sha}", token=bob.token).status_code == 404
    r = server.request("PUT", f"/v1/blobs/{'0' * 64}", token=alice.token, content=b"x")
    assert r.status_code == 400
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        **{
            "aws_access_key_id": "test",
            "aws_secret_access_key": "test",
            "region_name": "us-east-1",
        },
    )
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="blobs", Prefix="exchange/")["Contents"]]
    assert keys == [f"exchange/{sha[:2]}/{sha}"]
    assert not list((tmp_path).rglob(".upload-*"))  # nothing left staged


def test_an_upload_cut_short_is_the_clients_fault_not_an_internal_error(
    server: ServerUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    # A client that closed the connection mid-body was logged as an internal error with a
    # traceback (starlette's ClientDisconnect).
    token = server.tenant("alice").token
    sha = hashlib.sha256(b"x" * 1000).hexdigest()
    sent: list[dict[str, Any]] = []
    parts = [
        {"type": "http.request", "body": b"x" * 7, "more_body": True},
        {"type": "http.disconnect"},
    ]

    async def receive() -> dict[str, Any]:
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": f"/v1/blobs/{sha}",
        "raw_path": f"/v1/blobs/{sha}".encode(),
        "query_string": b"",
        "headers": [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-length", b"1000"),
            (b"content-type", b"application/octet-stream"),
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
    }
    with caplog.at_level(logging.INFO):
        asyncio.run(server.app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert server.request("HEAD", f"/v1/blobs/{sha}", token=token).status_code == 404
