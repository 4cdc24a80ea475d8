"""OCI image references (``python:3.12-slim``, ``ghcr.io/org/app@sha256:...``): the grammar.

Pure and shared: the SDK checks a reference when ``Image.from_registry`` is called, the agent
parses it again to pull. Docker Hub's short names are normalised the way ``docker pull``
does: ``python`` is ``docker.io/library/python:latest``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DOCKER_HUB", "ImageRef", "parse_image_ref"]

DOCKER_HUB = "docker.io"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REGISTRY = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9\-]+)*(?::[0-9]{1,5})?$"
)
_MAX_REF = 512


@dataclass(frozen=True)
class ImageRef:
    """A parsed reference. ``tag`` is set unless only a digest was given; ``digest`` pins the
    manifest (then the tag is informative only)."""

    registry: str  # "docker.io", "ghcr.io", "127.0.0.1:5000"
    repository: str  # "library/python"
    tag: str | None
    digest: str | None

    @property
    def reference(self) -> str:
        """What the manifest is fetched by: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_image_ref(text: str) -> ImageRef:
    """Parse ``text``; raises ``ValueError`` with a message naming what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("an image reference is a non-empty string such as 'python:3.12-slim'")
    if len(text) > _MAX_REF or text != text.strip():
        raise ValueError(f"{text[:80]!r} is not an image reference (too long or spaces)")
    rest, digest = text, None
    if "@" in rest and "/" in rest.split("@", 1)[1]:
        # user:password@registry/...: credentials, which would be stored and shown with the
        # function (never repeated here).
        raise ValueError(
            "an image reference holds no credentials (user:password@...): name the registry "
            "and repository only, and pass the credentials as a secret with REGISTRY_USERNAME "
            "and REGISTRY_PASSWORD: Image.from_registry(ref, secret=crucible.Secret.from_name"
            "(NAME))"
        )
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise ValueError(
                f"{text!r}: the digest must be 'sha256:' followed by 64 lowercase hex digits"
            )
    registry = DOCKER_HUB
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        if not _REGISTRY.match(first):
            raise ValueError(f"{text!r}: {first!r} is not a registry host[:port]")
        port = first.rpartition(":")[2] if ":" in first and not first.endswith("]") else ""
        if port and (not port.isdigit() or not 1 <= int(port) <= 65535):
            raise ValueError(f"{text!r}: the registry's port {port!r} is not a port (1-65535)")
        registry, rest = first, remainder
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.match(tag):
            raise ValueError(
                f"{text!r}: the tag {tag!r} may hold letters, digits, '_', '.' and '-' "
                "(at most 128)"
            )
    if registry in (DOCKER_HUB, "index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
        if "/" not in rest:
            rest = f"library/{rest}"
    if not _REPOSITORY.match(rest):
        raise ValueError(
            f"{text!r}: the repository {rest!r} must be lowercase letters, digits and "
            "separators ('.', '_', '-', '/'), e.g. 'python' or 'org/app'"
        )
    if tag is None and digest is None:
        tag = "latest"
    return ImageRef(registry=registry, repository=rest, tag=tag, digest=digest)
