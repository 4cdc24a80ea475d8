"""Deployments: named, versioned apps that keep running after their client exits."""

from __future__ import annotations

from pydantic import Field

from crucible.protocol.common import MAX_WIRE_INT, Named, Wire, WireInt

__all__ = [
    "DeploymentCreate",
    "DeploymentInfo",
    "DeploymentVersion",
    "Rollback",
    "ScheduleInfo",
    "VersionStarted",
]


class DeploymentCreate(Named):
    """Start a new version of the deployment ``name`` (created on first use)."""


class VersionStarted(Wire):
    deployment_id: str
    name: str
    app_id: str  # register the version's functions on this app, then activate it
    version: WireInt


class DeploymentVersion(Wire):
    version: WireInt
    app_id: str
    state: str  # deploying | running | retiring | stopped
    created_ms: WireInt
    functions: list[str] = Field(default_factory=list)


class ScheduleInfo(Wire):
    """A scheduled function of a deployment's current version."""

    function: str
    schedule: str  # e.g. "cron '*/5 * * * *' (UTC)" or "every 300 s"
    next_run_ms: WireInt
    last_tick_ms: WireInt | None = None
    last_call_id: str | None = None


class DeploymentInfo(Wire):
    id: str
    name: str
    state: str  # running | stopped
    version: WireInt  # the current version (0: none activated yet)
    app_id: str | None
    created_ms: WireInt
    updated_ms: WireInt
    versions: list[DeploymentVersion] = Field(default_factory=list)
    schedules: list[ScheduleInfo] = Field(default_factory=list)


class Rollback(Wire):
    version: int = Field(ge=1, le=MAX_WIRE_INT)
