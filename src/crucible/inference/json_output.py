"""``response_format``: JSON output by validate-and-retry.

This server does not constrain decoding. It generates, parses the text as JSON (and checks
it against the ``json_schema`` when one is given, with the ``jsonschema`` package), and on a
failure generates again, up to ``EngineConfig.json_attempts`` times, sampling at a
temperature of at least 0.7 with a fresh seed so that a retry can differ from the greedy
answer. When no attempt validates, the request fails with 422 ``json_output_failed``.
"""

from __future__ import annotations

import json
from typing import Any

from crucible.inference.api_errors import bad_request
from crucible.inference.schemas import ResponseFormat

__all__ = ["RETRY_MIN_TEMPERATURE", "check_format", "json_problem", "schema_of"]

RETRY_MIN_TEMPERATURE = 0.7


def schema_of(fmt: ResponseFormat) -> dict[str, Any] | None:
    """The JSON schema to check against (None for json_object); 400 on a malformed one."""
    if fmt.type != "json_schema":
        return None
    spec = fmt.json_schema
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise bad_request(
            "response_format.json_schema must be an object with a 'schema' object",
            param="response_format",
        )
    schema: dict[str, Any] = spec.get("schema", {})
    try:
        import jsonschema

        jsonschema.validators.validator_for(schema).check_schema(schema)
    except ImportError:  # pragma: no cover - jsonschema ships with the inference extra
        pass
    except Exception as exc:
        raise bad_request(
            f"response_format.json_schema.schema is not a valid JSON schema: "
            f"{getattr(exc, 'message', exc)}",
            param="response_format",
        ) from exc
    return schema


def check_format(fmt: ResponseFormat | None) -> None:
    if fmt is not None:
        schema_of(fmt)


def json_problem(text: str, schema: dict[str, Any] | None) -> str | None:
    """Why ``text`` is not the JSON asked for, or None when it is."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"not JSON ({exc})"
    if schema is None:
        return None if isinstance(value, dict) else "not a JSON object"
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        return f"not what the schema asks ({exc.message})"
    return None
