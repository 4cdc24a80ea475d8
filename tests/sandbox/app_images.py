"""Functions with images, for tests/sandbox/test_images.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import crucible

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE / "image_src"))

app = crucible.App("images")

image = (
    crucible.Image()
    .uv_pip_install("six==1.16.0")
    .add_local_dir(HERE / "image_files", "/assets")
    .add_local_python_source("imghelper")
    .env({"GREETING": "hello"})
    .preload("json")
)
# The same build steps with other run-time settings: one build on the host serves both.
same_build = image.env({"GREETING": "hi"})
broken = crucible.Image().pip_install("crucible-no-such-package-zz==1.0")

HOOKS: list[str] = []


@crucible.enter(snapshot=True)
def before_fork() -> None:
    HOOKS.append(f"snapshot:{os.getpid()}")


@crucible.enter()
def per_container() -> None:
    HOOKS.append("enter")


@app.function(image=image, timeout=60)
def inspect_image() -> dict[str, Any]:
    import imghelper
    import six

    with open("/assets/data.txt") as f:
        data = f.read().strip()
    return {
        "six": six.__version__,
        "six_file": six.__file__,
        "helper": imghelper.VALUE,
        "helper_file": imghelper.__file__,
        "data": data,
        "greeting": os.environ.get("GREETING"),
        "hooks": list(HOOKS),
        "pid": os.getpid(),
    }


@app.function(image=image, timeout=60)
def hooks_seen() -> dict[str, Any]:
    """A second function of the same code and image: its container forks from the zygote."""
    return {"hooks": list(HOOKS), "pid": os.getpid()}


@app.function(image=same_build, timeout=60)
def greeting() -> str | None:
    return os.environ.get("GREETING")


@app.function(image=broken, timeout=60)
def never_runs() -> None:
    raise AssertionError("unreachable")
