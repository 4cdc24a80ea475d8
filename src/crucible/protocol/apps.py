"""Apps and functions."""

from __future__ import annotations

from pydantic import Field

from crucible.protocol.common import Named, Resources, RetryPolicy, Wire
from crucible.protocol.images import ImageSpec

__all__ = ["AppCreate", "AppInfo", "CodeRef", "FunctionCreate", "FunctionInfo"]


class AppCreate(Named):
    ephemeral: bool = True


class AppInfo(Wire):
    id: str
    name: str
    state: str  # running | stopped
    ephemeral: bool
    created_ms: int
    stopped_ms: int | None = None
    functions: int = 0


class CodeRef(Wire):
    """Where a function's code is: a content-addressed source bundle (zip) and the module
    and qualified name inside it. The worker imports the module from the bundle."""

    bundle: str = Field(pattern=r"^[0-9a-f]{64}$")
    module: str = Field(min_length=1, max_length=512)
    qualname: str = Field(min_length=1, max_length=512)


class FunctionCreate(Named):
    code: CodeRef
    resources: Resources = Field(default_factory=Resources)
    timeout_s: float = Field(default=300.0, gt=0, le=7 * 86400)
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    max_containers: int | None = Field(default=None, ge=1, le=100_000)
    scaledown_window_s: float | None = Field(default=None, ge=0, le=86400)
    is_async: bool = False
    # The environment its containers run in (None: the host's own Python environment), and
    # whether a sandboxed container may open network connections.
    image: ImageSpec | None = None
    network: bool = False


class FunctionInfo(FunctionCreate):
    id: str
    app_id: str
    created_ms: int
