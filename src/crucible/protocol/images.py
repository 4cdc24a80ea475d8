"""Images: the environment a function's containers run in, identified by its content.

An image is a list of build steps (packages installed with ``uv``, local files shipped as
blobs) plus what containers see at run time (environment variables, modules a zygote imports
before it forks). Or it is an OCI image from a registry (``registry``: a reference such as
``python:3.12-slim``, with the name of the account's secret holding the registry's
credentials), which the agent pulls and runs as the sandbox's root file system.
The SDK computes :attr:`ImageSpec.id` and the agent checks it, so an image
is built once per host whoever asks for it.
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

import orjson
from pydantic import Field, model_validator

from crucible.protocol.common import Wire
from crucible.protocol.image_refs import parse_image_ref

__all__ = ["BuildStep", "ImageSpec"]

_PACKAGE = r"^[A-Za-z0-9][A-Za-z0-9._\-\[\],<>=!~ ;:'\"@/+*]*$"
_MODULE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class BuildStep(Wire):
    """One build step, applied in order.

    - ``pip``: install ``packages`` (requirement strings) into the image's environment;
    - ``files``: unpack the zip blob ``blob`` at ``path`` (absolute, seen read-only at that
      path inside containers);
    - ``python``: unpack the zip blob ``blob`` into a directory on the image's ``sys.path``.
    """

    kind: Literal["pip", "files", "python"]
    packages: list[str] = Field(default_factory=list, max_length=1000)
    blob: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    path: str | None = Field(default=None, max_length=512, pattern=r"^/[A-Za-z0-9._\-/]*$")

    @model_validator(mode="after")
    def _check(self) -> BuildStep:
        for p in self.packages:
            if len(p) > 512 or not re.match(_PACKAGE, p) or p.startswith("-"):
                raise ValueError(f"{p!r} is not a package requirement")
        if self.kind == "pip" and (not self.packages or self.blob or self.path):
            raise ValueError("a pip step lists packages and nothing else")
        if self.kind in ("files", "python") and (self.blob is None or self.packages):
            raise ValueError(f"a {self.kind} step names one blob")
        if self.kind == "files" and (self.path is None or ".." in self.path.split("/")):
            raise ValueError("a files step needs an absolute path without '..'")
        return self


class ImageSpec(Wire):
    steps: list[BuildStep] = Field(default_factory=list, max_length=256)
    env: dict[str, str] = Field(default_factory=dict, max_length=256)
    # Imported by the zygote before it forks containers (e.g. "torch").
    preload: list[str] = Field(default_factory=list, max_length=64)
    # An OCI image reference (Image.from_registry): the agent pulls it and runs containers
    # with it as their root file system. None: the host's own Python with the build steps.
    registry: str | None = Field(default=None, max_length=512)
    # The name of the account's secret with REGISTRY_USERNAME and REGISTRY_PASSWORD.
    registry_secret: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]{1,128}$")
    # sha256 of the canonical JSON of everything above; the SDK sets it, the server checks it.
    id: str = Field(default="", pattern=r"^([0-9a-f]{64})?$")

    @model_validator(mode="after")
    def _check(self) -> ImageSpec:
        for name in self.env:
            if not re.match(_ENV_NAME, name) or name.startswith("CRUCIBLE_"):
                raise ValueError(f"environment variable name {name!r} is not allowed")
        for m in self.preload:
            if not re.match(_MODULE, m):
                raise ValueError(f"{m!r} is not a module name")
        if self.registry is not None:
            parse_image_ref(self.registry)  # ValueError names what is wrong
            if self.steps:
                raise ValueError(
                    "an image from a registry takes no build steps (pip installs, local files): "
                    "put them in the image itself, or ship code with the app"
                )
        elif self.registry_secret is not None:
            raise ValueError("registry_secret is only for an image from a registry")
        expected = self.content_hash()
        if not self.id:
            self.id = expected
        elif self.id != expected:
            raise ValueError("image id does not match its content")
        return self

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the whole spec (id excluded)."""
        body = self.model_dump(mode="json", exclude={"id", "registry", "registry_secret"})
        # Added only when set, so the ids of images without a registry did not change.
        if self.registry is not None:
            body["registry"] = self.registry
            body["registry_secret"] = self.registry_secret
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()

    def build_hash(self) -> str:
        """sha256 of the build steps alone: images that differ only in env or preload share
        one build on disk."""
        body = [s.model_dump(mode="json") for s in self.steps]
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()

    @property
    def blobs(self) -> list[str]:
        return [s.blob for s in self.steps if s.blob is not None]
