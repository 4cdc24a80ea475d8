"""Schemathesis against the live control plane: every operation of the OpenAPI description,
with valid and invalid inputs, called with an admin token and with a builder token.

Bounded for the normal suite (``EXAMPLES`` per operation, about half a minute on a 2-core
machine). A longer campaign: ``CRUCIBLE_SCHEMATHESIS_EXAMPLES=500 pytest
tests/server/test_schemathesis.py`` (docs/reference/api.md).

Checks: no server error (5xx), every status code documented, the content type documented,
and every response body valid against its documented schema (errors included: the
description lists 400/401/403/404/409/429 with the one error shape). The app is the real one
in-process (ASGI) on a real SQLite store, with seeded objects so some requests reach them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from crucible.protocol.accounts import Scope  # noqa: E402

from server_testlib import ServerUnderTest  # noqa: E402

# Examples per operation (each sent with both tokens). Kept small so the run fits the normal
# suite; CRUCIBLE_SCHEMATHESIS_EXAMPLES raises it for a longer campaign.
EXAMPLES = 8
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


# Read at import: each test runs in a cleaned environment (tests/conftest.py).
_CAMPAIGN = os.environ.get("CRUCIBLE_SCHEMATHESIS_EXAMPLES", "").strip()


def _examples() -> int:
    return int(_CAMPAIGN) if _CAMPAIGN else EXAMPLES


@pytest.mark.timeout(1800)
def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    server = ServerUnderTest(tmp_path / "home", f"sqlite:///{tmp_path / 'store.db'}")
    try:
        admin = server.tenant("ops", Scope.ADMIN).token
        builder = server.tenant("alice").token
        # Objects for requests to find: an app with a function, a call, a host.
        app_id = server.new_app(builder)
        fn = server.new_function(builder, app_id, server.put_blob(builder))
        server.new_calls(builder, fn)
        server.register_host(server.tenant("alice", Scope.HOST).token)

        schema = schemathesis.openapi.from_asgi(
            "/openapi.json", server.app, headers={"authorization": f"Bearer {admin}"}
        )
        failures: list[str] = []
        operations = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            operations += 1
            _run(operation, (admin, builder), failures)
        assert operations >= 40
        assert not failures, "\n\n".join(failures[:20])
    finally:
        server.close()


def _run(operation: Any, tokens: tuple[str, ...], failures: list[str]) -> None:
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )

    @given(case=strategy)
    @settings(
        max_examples=_examples(),
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        for token in tokens:
            response = case.call(headers={"authorization": f"Bearer {token}"})
            _validate(case, response, operation.label, failures)

    check()


def _validate(case: Any, response: Any, label: str, failures: list[str]) -> None:
    validate: Callable[..., None] = case.validate_response
    try:
        validate(response, checks=CHECKS)
    except Exception as exc:
        failures.append(f"{label}: {response.status_code} {response.text[:300]}\n{exc}")
