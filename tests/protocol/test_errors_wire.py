"""The one error root: every class has a stable code and survives the wire."""

from __future__ import annotations

import pytest

import crucible
from crucible import errors
from crucible.errors import Error, RemoteError, error_from_wire

CLASSES = [getattr(errors, name) for name in errors.__all__ if name != "error_from_wire"]

# The documented contract (docs/reference/errors.md and the tree in errors.py).
CODES = {
    "Error": ("error", 500),
    "InvalidRequestError": ("invalid_request", 400),
    "PayloadTooLargeError": ("payload_too_large", 413),
    "InvalidGpuError": ("invalid_gpu", 400),
    "InvalidResourcesError": ("invalid_resources", 400),
    "SerializationError": ("serialization_error", 400),
    "AuthError": ("unauthorized", 401),
    "PermissionDeniedError": ("forbidden", 403),
    "NotFoundError": ("not_found", 404),
    "ConflictError": ("conflict", 409),
    "HostSupersededError": ("host_superseded", 409),
    "QuotaExceededError": ("quota_exceeded", 413),
    "RateLimitedError": ("rate_limited", 429),
    "InsufficientCreditError": ("insufficient_credit", 402),
    "MarketRefusedError": ("market_refused", 422),
    "ResourcesUnsatisfiableError": ("resources_unsatisfiable", 422),
    "FunctionTimeoutError": ("function_timeout", 408),
    "CallCancelledError": ("call_cancelled", 409),
    "ContainerExitedError": ("container_exited", 500),
    "RemoteError": ("remote_error", 500),
    "ImageBuildError": ("image_build_failed", 500),
    "ImagePullError": ("image_pull_failed", 502),
    "ImageNotFoundError": ("image_not_found", 404),
    "ImageDigestError": ("image_digest_mismatch", 502),
    "ImageTooLargeError": ("image_too_large", 413),
    "ImageUnsupportedError": ("image_unsupported", 422),
    "SandboxUnavailableError": ("sandbox_unavailable", 500),
    "BadGatewayError": ("bad_gateway", 502),
    "ServerUnavailableError": ("server_unavailable", 503),
    "StoreUnavailableError": ("store_unavailable", 503),
    "SettingError": ("invalid_setting", 500),
    "InternalError": ("internal", 500),
}


def test_every_class_is_pinned() -> None:
    assert sorted(cls.__name__ for cls in CLASSES) == sorted(CODES)
    for cls in CLASSES:
        assert issubclass(cls, Error)
        assert (cls.code, cls.http_status) == CODES[cls.__name__]
    assert len({cls.code for cls in CLASSES}) == len(CLASSES), "codes must be unique"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_wire_round_trip(cls: type[Error]) -> None:
    message = f"something about {cls.__name__} — fix it like so"
    wire = cls(message).to_wire()
    assert wire == {"error": {"code": cls.code, "message": message}}
    back = error_from_wire(wire["error"]["code"], wire["error"]["message"])
    assert type(back) is cls
    assert back.message == message and str(back) == message
    assert isinstance(back, crucible.Error)


def test_subclass_relations_callers_rely_on() -> None:
    for cls in (
        errors.PayloadTooLargeError,
        errors.InvalidGpuError,
        errors.InvalidResourcesError,
        errors.SerializationError,
    ):
        assert issubclass(cls, errors.InvalidRequestError)
    assert issubclass(errors.FunctionTimeoutError, TimeoutError)  # `except TimeoutError` works


def test_unknown_codes_become_the_root() -> None:
    err = error_from_wire("brand_new_code", "from a newer server")
    assert type(err) is Error and err.message == "from a newer server"


def test_remote_error_carries_the_remote_type_and_traceback() -> None:
    err = RemoteError("bad input", exc_type="mylib.CustomError", remote_traceback="File x, line 1")
    assert str(err).startswith("mylib.CustomError: bad input")
    assert "Remote traceback:\nFile x, line 1" in str(err)
    assert str(RemoteError("plain")) == "plain"
    assert err.to_wire() == {"error": {"code": "remote_error", "message": "bad input"}}
