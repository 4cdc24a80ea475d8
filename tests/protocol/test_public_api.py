"""The public API: builders import from ``crucible`` only, and its names are pinned."""

from __future__ import annotations

import crucible

PUBLIC = [
    "App",
    "AuthError",
    "BadGatewayError",
    "CallCancelledError",
    "Cls",
    "ConflictError",
    "ContainerExitedError",
    "Cron",
    "Dict",
    "Error",
    "Function",
    "FunctionCall",
    "FunctionTimeoutError",
    "HostSupersededError",
    "Image",
    "ImageBuildError",
    "ImageDigestError",
    "ImageNotFoundError",
    "ImagePullError",
    "ImageTooLargeError",
    "ImageUnsupportedError",
    "InsufficientCreditError",
    "InternalError",
    "InvalidGpuError",
    "InvalidRequestError",
    "InvalidResourcesError",
    "LocalEntrypoint",
    "MarketRefusedError",
    "NotFoundError",
    "PayloadTooLargeError",
    "Period",
    "PermissionDeniedError",
    "Pod",
    "Queue",
    "QuotaExceededError",
    "RateLimitedError",
    "RemoteError",
    "ResourcesUnsatisfiableError",
    "Retries",
    "SandboxUnavailableError",
    "Secret",
    "SerializationError",
    "ServerUnavailableError",
    "SettingError",
    "StoreUnavailableError",
    "Volume",
    "__version__",
    "asgi_app",
    "batched",
    "concurrent",
    "current_function_call_id",
    "enter",
    "exit",
    "fastapi_endpoint",
    "is_local",
    "method",
    "on_stop",
]


def test_public_names_are_pinned() -> None:
    """Changing the public API is a decision: update this list in the same change."""
    assert crucible.__all__ == PUBLIC
    assert sorted(PUBLIC) == PUBLIC


def test_every_public_name_resolves() -> None:
    for name in crucible.__all__:
        assert getattr(crucible, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from crucible import *", namespace)
    assert set(PUBLIC) - {"__version__"} <= set(namespace)


def test_errors_are_the_same_objects_as_in_crucible_errors() -> None:
    from crucible import errors

    for name in errors.__all__:
        if name != "error_from_wire":
            assert getattr(crucible, name) is getattr(errors, name), name


def test_version_is_a_version_string() -> None:
    parts = crucible.__version__.split(".")
    assert len(parts) == 3 and all(p.isdigit() for p in parts)
