"""Four separate apps whose functions each need a whole core and keep idle containers for an
hour (the idle-containers-yield end-to-end test runs them on a one-core host)."""

from __future__ import annotations

import os

import crucible

apps = [crucible.App(f"yield-{i}") for i in range(4)]
_OPTS = {"cpu": 1.0, "memory": "256MiB", "scaledown_window": 3600}


@apps[0].function(**_OPTS)
def first() -> str:
    return os.environ["CRUCIBLE_CONTAINER_ID"]


@apps[1].function(**_OPTS)
def second() -> str:
    return os.environ["CRUCIBLE_CONTAINER_ID"]


@apps[2].function(**_OPTS)
def third() -> str:
    return os.environ["CRUCIBLE_CONTAINER_ID"]


@apps[3].function(**_OPTS)
def fourth() -> str:
    return os.environ["CRUCIBLE_CONTAINER_ID"]


functions = [first, second, third, fourth]
