"""Module-level code runs in each container with that container's environment and secrets
(docs/builders.md: secrets are "set before your module is imported"). From the second
container of some code on, a sandbox's zygote imported the user's module once, without any
container's environment, and forked every later container from it: a module reading its API
key at import got None there. Only a module with @crucible.enter(snapshot=True) hooks is
imported in the zygote now (tests/sandbox/test_images.py covers its hooks)."""

from __future__ import annotations

from typing import Any

import app_module_env as m

from harness import Exchange


def test_every_container_imports_the_module_with_its_secrets(
    sandboxed: Exchange, tenant: Any
) -> None:
    with m.app.run(client=tenant):
        seen = [m.first.remote(), m.second.remote(), m.third.remote()]
    assert [s["key"] for s in seen] == ["s3cret"] * 3, seen
    # each imported in its own container, not once for all of them
    assert all(s["container"] == s["now"] and s["now"] for s in seen), seen
    assert len({s["now"] for s in seen}) == 3, seen
