"""A small fuzz over every operation of the OpenAPI description, with two tokens (a builder's
and a host agent's) and none: hostile path parameters, query values and bodies (each field
of a valid-looking body replaced in turn by a hostile value). The server answers each with a
status below 500 and, for errors, the one error shape; it never answers 500 to a client's
mistake. Deterministic: the same requests every run (schemathesis, in tests/server, covers
random ones)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from crucible.protocol.accounts import Scope

from server_testlib import ServerUnderTest

# Path segments: NUL (encoded), huge and negative numbers, not-numbers, bidi and
# non-UTF-8 bytes, a long segment, dot segments, an rq- id of the gateway's fast path.
SEGMENTS = ["%00", "9" * 400, "-1", "NaN", "inf", "\u202eé%00", "a" * 4000, "..", "rq-x", "%ff"]
QUERY = ["-1", "9" * 400, "NaN", "inf", "1e400", "\x00", "\u202e", "", "a" * 4000]
BODIES = [b"", b"null", b"[]", b'"x"', b"1e400", b"NaN", b'{"a":' * 50_000, b"\xff\xfe"]
VALUES: list[Any] = [
    -1,
    2**63,
    10**400,
    1e308,
    "NaN",
    "\x00",
    "\x1b[31m\u202e",
    "a" * 100_000,
    [],
    {},
    None,
    [1] * 20_000,
    "../../etc/passwd",
]


def _resolve(schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _sample(schema: dict[str, Any], components: dict[str, Any], depth: int = 0) -> Any:
    """A plausible value of ``schema`` (defaults, first enum values, minimums)."""
    schema = _resolve(schema, components)
    if depth > 6:
        return None
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, ()):
            option = _resolve(option, components)
            if option.get("type") != "null":
                return _sample(option, components, depth + 1)
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("default") is not None:
        return schema["default"]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties", {})
        return {k: _sample(v, components, depth + 1) for k, v in props.items()}
    if kind == "array":
        return [_sample(schema.get("items", {}), components, depth + 1)]
    if kind == "integer":
        return max(1, int(schema.get("minimum", 1)))
    return {"number": 1.5, "boolean": True}.get(str(kind), "abc")


def _mutations(body: Any) -> Iterator[Any]:
    """``body`` with one field at a time (at any depth) replaced by a hostile value."""
    if isinstance(body, dict):
        for key, value in body.items():
            for bad in VALUES:
                yield {**body, key: bad}
            for inner in _mutations(value):
                yield {**body, key: inner}
    elif isinstance(body, list) and body:
        for inner in _mutations(body[0]):
            yield [inner, *body[1:]]


def _check(r: httpx.Response, what: str, failures: list[str]) -> None:
    if r.status_code >= 500:
        failures.append(f"{what}: {r.status_code} {r.text[:200]}")
    elif r.status_code >= 400 and r.request.method != "HEAD":
        body = r.json()
        if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
            failures.append(f"{what}: an error not in the error shape: {r.text[:200]}")


@pytest.mark.timeout(900)
def test_no_hostile_input_makes_a_server_error(server: ServerUnderTest) -> None:
    alice = server.tenant("alice")
    host = server.tenant("alice", Scope.HOST)
    app_id = server.new_app(alice.token)
    fn = server.new_function(alice.token, app_id, server.put_blob(alice.token))
    server.new_calls(alice.token, fn)
    host_id = server.register_host(host.token)
    real = {"app_id": app_id, "function_id": fn, "host_id": host_id}
    spec = server.app.openapi()
    components = spec["components"]["schemas"]
    failures: list[str] = []
    operations = 0
    for template, ops in spec["paths"].items():
        for method, op in ops.items():
            if method not in ("get", "post", "put", "patch", "delete", "head"):
                continue
            operations += 1
            params = re.findall(r"{([^}:]+)(?::path)?}", template)
            queries = [p["name"] for p in op.get("parameters", []) if p["in"] == "query"]
            real_path = re.sub(
                r"{([^}:]+)(?::path)?}", lambda m: real.get(m.group(1), "x"), template
            )
            schema = (
                op.get("requestBody", {})
                .get("content", {})
                .get("application/json", {})
                .get("schema")
            )
            for token in (alice.token, host.token, None):
                for seg in SEGMENTS:
                    path = template
                    for name in params:
                        path = re.sub(r"{" + name + r"(:path)?}", seg, path)
                    r = server.request(method.upper(), path, token=token)
                    _check(r, f"{method.upper()} {path[:60]} ({seg[:10]!r})", failures)
                for name in queries:
                    for value in QUERY:
                        r = server.request(
                            method.upper(), real_path, token=token, params={name: value}
                        )
                        _check(r, f"{method.upper()} {real_path} ?{name}={value[:10]!r}", failures)
                if method not in ("post", "put", "patch") or token is None:
                    continue
                raws = list(BODIES)
                if schema is not None:
                    raws += [
                        json.dumps(b).encode() for b in _mutations(_sample(schema, components))
                    ]
                for raw in raws:
                    r = server.request(
                        method.upper(),
                        real_path,
                        token=token,
                        content=raw,
                        headers={"content-type": "application/json"},
                    )
                    _check(r, f"{method.upper()} {real_path} body {raw[:60]!r}", failures)
    assert operations >= 90
    assert not failures, "\n".join(failures[:30])
