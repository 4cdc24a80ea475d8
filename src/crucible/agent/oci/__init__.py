"""OCI images for the agent: pull from registries, verify, unpack, cache, prepare to run.

Modules: :mod:`.registry` (the ``/v2/`` client and its auth), :mod:`.manifests` (indexes,
manifests and configs), :mod:`.blobs` (verified blobs by digest), :mod:`.unpack` (safe layer
unpacking with whiteouts, rootfs assembly), :mod:`.cache` (:class:`OciImages`: the cache that
pods and functions use), :mod:`.python` (the image's Python and the worker's dependencies).
The reference grammar is shared with the SDK in :mod:`crucible.protocol.image_refs`.
"""

from crucible.agent.oci.cache import OciImages, PreparedImage
from crucible.agent.oci.registry import RegistryAuth, RegistryConfig

__all__ = ["OciImages", "PreparedImage", "RegistryAuth", "RegistryConfig"]
