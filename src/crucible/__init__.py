"""Crucible: an open GPU compute exchange with a serverless Python runtime.

Builders import everything from here::

    import crucible

    app = crucible.App("hello")

    @app.function(gpu="H100")
    def square(x: int) -> int:
        return x * x

Everything not listed in ``__all__`` is internal and may change.
"""

from __future__ import annotations

__version__ = "0.1.0"

from crucible.errors import (
    AuthError,
    BadGatewayError,
    CallCancelledError,
    ConflictError,
    ContainerExitedError,
    Error,
    FunctionTimeoutError,
    HostSupersededError,
    ImageBuildError,
    ImageDigestError,
    ImageNotFoundError,
    ImagePullError,
    ImageTooLargeError,
    ImageUnsupportedError,
    InsufficientCreditError,
    InternalError,
    InvalidGpuError,
    InvalidRequestError,
    InvalidResourcesError,
    MarketRefusedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    RemoteError,
    ResourcesUnsatisfiableError,
    SandboxUnavailableError,
    SerializationError,
    ServerUnavailableError,
    SettingError,
    StoreUnavailableError,
)
from crucible.sdk._app import App, LocalEntrypoint
from crucible.sdk._cls import Cls, exit, method
from crucible.sdk._concurrency import batched, concurrent
from crucible.sdk._dicts import Dict
from crucible.sdk._functions import Function, FunctionCall, Retries
from crucible.sdk._hooks import enter
from crucible.sdk._image import Image
from crucible.sdk._pods import Pod
from crucible.sdk._queues import Queue
from crucible.sdk._runtime import current_function_call_id, is_local
from crucible.sdk._schedules import Cron, Period
from crucible.sdk._secrets import Secret
from crucible.sdk._stop_hooks import on_stop
from crucible.sdk._volumes import Volume
from crucible.sdk._web import asgi_app, fastapi_endpoint

__all__ = [
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
