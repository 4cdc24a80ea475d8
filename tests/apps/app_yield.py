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


# GPU functions: each holds the host's one H100 while idle (the market end-to-end test).
gpu_apps = [crucible.App(f"yield-gpu-{i}") for i in range(3)]
_GPU = {"gpu": "H100", "cpu": 0.25, "memory": "256MiB", "scaledown_window": 3600}


@gpu_apps[0].function(**_GPU)
def gpu_first() -> str:
    return os.environ["CRUCIBLE_CONTAINER_ID"]


@gpu_apps[1].function(**_GPU)
def gpu_second() -> str:
    return os.environ["CRUCIBLE_CONTAINER_ID"]


@gpu_apps[2].function(**_GPU)
def gpu_third() -> str:
    return os.environ["CRUCIBLE_CONTAINER_ID"]
