"""Hosts, their inventory, and the agent's sync loop."""

from __future__ import annotations

from pydantic import Field, model_validator

from crucible.protocol.common import Wire
from crucible.protocol.containers import ContainerAssignment, ContainerReport

__all__ = ["DeviceInfo", "HostInfo", "HostRegister", "HostSync", "HostSyncReply", "Inventory"]


class DeviceInfo(Wire):
    index: int = Field(ge=0, le=1023)
    model: str = Field(min_length=1, max_length=64)
    memory_mib: int = Field(ge=0, le=2**40)
    uuid: str = Field(min_length=1, max_length=128)
    fake: bool = False


class Inventory(Wire):
    cpu_cores: float = Field(gt=0, le=100_000)
    memory_mib: int = Field(gt=0, le=2**40)
    disk_mib: int = Field(ge=0, le=2**50)
    gpus: list[DeviceInfo] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _distinct_devices(self) -> Inventory:
        indices = [g.index for g in self.gpus]
        uuids = [g.uuid for g in self.gpus]
        if len(set(indices)) != len(indices) or len(set(uuids)) != len(uuids):
            raise ValueError("each GPU must have its own index and UUID")
        return self


class HostRegister(Wire):
    name: str = Field(min_length=1, max_length=128)
    region: str = Field(default="local", max_length=64)
    # Declared by the host's operator; None keeps what the host has on record.
    energy_source: str | None = Field(default=None, min_length=1, max_length=64)
    carbon_g_per_kwh: int | None = Field(default=None, ge=0, le=5000)
    inventory: Inventory
    agent_version: str = Field(default="", max_length=64)


class HostInfo(Wire):
    id: str
    name: str
    region: str
    state: str  # ready | lost
    inventory: Inventory
    last_seen_ms: int
    registered_ms: int
    allocated_cpu: float = 0.0
    allocated_memory_mib: int = 0
    allocated_gpus: list[int] = Field(default_factory=list)
    containers: int = 0


class HostSync(Wire):
    """The agent's heartbeat: what its containers are doing. The server answers at once if it
    has work for the host, otherwise within ``wait_s``."""

    containers: list[ContainerReport] = Field(default_factory=list, max_length=10_000)
    wait_s: float = Field(default=0.0, ge=0, le=60)
    # Increases with every sync an agent process sends (from 1 after each registration).
    # Reports may race each other from two agent threads; the server ignores one older than
    # the newest it has seen, so a stale report never declares a running container gone.
    seq: int = Field(default=0, ge=0)


class HostSyncReply(Wire):
    start: list[ContainerAssignment] = Field(default_factory=list)
    stop: list[str] = Field(default_factory=list)
    # SIGTERM→SIGKILL grace of stops that have their own (a preemption's), else the agent's.
    grace_s: dict[str, float] = Field(default_factory=dict)
    heartbeat_interval_s: float = 1.0
