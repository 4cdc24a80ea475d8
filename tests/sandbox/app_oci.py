"""Functions that run from OCI images, for tests/sandbox/test_oci_images.py. The references
come from the environment of the test (the registry's port changes per run); inside a
container the module is imported again, where only a valid placeholder is needed."""

from __future__ import annotations

import os
import sys
from typing import Any

import crucible

_PLACEHOLDER = "127.0.0.1:1/placeholder:v1"
app = crucible.App("oci-images")

python_image = crucible.Image.from_registry(
    os.environ.get("OCI_TEST_PYTHON_REF", _PLACEHOLDER)
).env({"FROM_SPEC": "spec"})
private_image = crucible.Image.from_registry(
    os.environ.get("OCI_TEST_PRIVATE_REF", _PLACEHOLDER),
    secret=crucible.Secret.from_name(os.environ.get("OCI_TEST_SECRET", "regcreds")),
)
no_python = crucible.Image.from_registry(os.environ.get("OCI_TEST_NOPY_REF", _PLACEHOLDER))
missing = crucible.Image.from_registry(os.environ.get("OCI_TEST_MISSING_REF", _PLACEHOLDER))


def _inspect() -> dict[str, Any]:
    with open("/etc/os-release") as f:
        os_release = f.read()
    return {
        "executable": sys.executable,
        "version": list(sys.version_info[:2]),
        "os_release": os_release,
        "uid": os.getuid(),
        "cwd": os.getcwd(),
        "image_var": os.environ.get("IMAGE_VAR"),
        "from_spec": os.environ.get("FROM_SPEC"),
        "path": os.environ.get("PATH"),
        "host_paths_seen": [p for p in ("/root", "/work", "/home") if os.path.exists(p)],
        "crucible_file": crucible.__file__,
    }


@app.function(image=python_image, timeout=60)
def inspect() -> dict[str, Any]:
    return _inspect()


@app.function(image=private_image, timeout=60)
def inspect_private() -> dict[str, Any]:
    return _inspect()


@app.function(image=no_python, timeout=60)
def never_runs_without_python() -> int:
    return 1


@app.function(image=missing, timeout=60)
def never_runs_missing() -> int:
    return 1
