"""Module-level code that reads the container's environment and secrets at import, as Modal
apps do (`client = OpenAI()` reading its key), and a module with a snapshot hook, for
tests/sandbox/test_module_env_sandbox.py."""

from __future__ import annotations

import os

import crucible

app = crucible.App("module-env")
secret = crucible.Secret.from_dict({"MODULE_ENV_KEY": "s3cret"})

# Read once, when the module is imported.
AT_IMPORT = {
    "key": os.environ.get("MODULE_ENV_KEY"),
    "container": os.environ.get("CRUCIBLE_CONTAINER_ID"),
}


def _seen() -> dict[str, object]:
    return {**AT_IMPORT, "now": os.environ.get("CRUCIBLE_CONTAINER_ID")}


@app.function(secrets=[secret], timeout=60)
def first() -> dict[str, object]:
    return _seen()


@app.function(secrets=[secret], timeout=60)
def second() -> dict[str, object]:
    return _seen()


@app.function(secrets=[secret], timeout=60)
def third() -> dict[str, object]:
    return _seen()
