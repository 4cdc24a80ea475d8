"""Reading OCI and Docker v2 manifests, indexes and image configs (pure: bytes in, data out).

An index (or Docker manifest list) is resolved to the manifest for this host's platform;
a manifest names the config blob and the layer blobs; the config gives what a container
starts with (ENV, WORKDIR, USER, ENTRYPOINT, CMD).
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from typing import Any

from crucible.agent.oci.blobs import check_digest
from crucible.errors import ImageUnsupportedError

__all__ = [
    "ImageConfig",
    "Manifest",
    "host_platform",
    "parse_config",
    "parse_manifest",
    "pick_platform",
]

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
)
_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def host_platform() -> tuple[str, str]:
    """(os, architecture) in OCI's words: ("linux", "amd64") on x86-64."""
    return "linux", _ARCH.get(platform.machine().lower(), platform.machine().lower())


@dataclass(frozen=True)
class Layer:
    digest: str
    size: int
    media_type: str


@dataclass(frozen=True)
class Manifest:
    config_digest: str
    config_size: int
    layers: list[Layer]

    @property
    def declared_bytes(self) -> int:
        return self.config_size + sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class ImageConfig:
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = "/"
    user: str = ""
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)


def _load(body: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except ValueError:
        raise ImageUnsupportedError(f"{what} is not JSON") from None
    if not isinstance(doc, dict):
        raise ImageUnsupportedError(f"{what} is not a JSON object")
    return doc


def is_index(media_type: str, body: bytes) -> bool:
    if media_type in INDEX_TYPES:
        return True
    try:
        doc = json.loads(body)
    except ValueError:
        return False
    return isinstance(doc, dict) and "manifests" in doc and "layers" not in doc


def pick_platform(body: bytes, ref: str) -> str:
    """The digest of the manifest for this host's platform in an index; else
    :class:`ImageUnsupportedError` listing the platforms the image has."""
    doc = _load(body, f"the index of {ref}")
    want_os, want_arch = host_platform()
    seen: list[str] = []
    for entry in doc.get("manifests") or []:
        if not isinstance(entry, dict):
            continue
        plat = entry.get("platform") or {}
        os_, arch = str(plat.get("os", "")), str(plat.get("architecture", ""))
        seen.append(f"{os_}/{arch}")
        if os_ == want_os and arch == want_arch:
            try:
                return check_digest(entry.get("digest"))
            except ValueError as exc:
                raise ImageUnsupportedError(f"the index of {ref}: {exc}") from None
    raise ImageUnsupportedError(
        f"image {ref} has no {want_os}/{want_arch} variant (it has: "
        f"{', '.join(sorted(set(seen))) or 'none'})"
    )


def parse_manifest(body: bytes, ref: str) -> Manifest:
    doc = _load(body, f"the manifest of {ref}")
    try:
        config = doc["config"]
        layers = [
            Layer(
                digest=check_digest(layer["digest"]),
                size=int(layer.get("size", 0)),
                media_type=str(layer.get("mediaType", "")),
            )
            for layer in doc.get("layers") or []
        ]
        manifest = Manifest(
            config_digest=check_digest(config["digest"]),
            config_size=int(config.get("size", 0)),
            layers=layers,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ImageUnsupportedError(f"the manifest of {ref} is malformed: {exc}") from None
    for layer in manifest.layers:
        if layer.media_type and layer.media_type not in LAYER_TYPES:
            raise ImageUnsupportedError(
                f"image {ref} has a layer of type {layer.media_type!r}; the agent unpacks "
                "tar and tar+gzip layers"
            )
    return manifest


def parse_config(body: bytes, ref: str) -> ImageConfig:
    doc = _load(body, f"the config of {ref}")
    c = doc.get("config") or {}
    if not isinstance(c, dict):
        c = {}
    env: dict[str, str] = {}
    for item in c.get("Env") or []:
        if isinstance(item, str) and "=" in item:
            k, v = item.split("=", 1)
            env[k] = v
    entry = c.get("Entrypoint") or []
    cmd = c.get("Cmd") or []
    return ImageConfig(
        env=env,
        workdir=str(c.get("WorkingDir") or "/"),
        user=str(c.get("User") or ""),
        entrypoint=[str(x) for x in entry] if isinstance(entry, list) else [],
        cmd=[str(x) for x in cmd] if isinstance(cmd, list) else [],
    )
