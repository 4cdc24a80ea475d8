"""Inventory detection: NVML through a fake pynvml module, declared GPUs, cgroup v2 caps."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crucible.agent.inventory import (
    cgroup_cpu_limit,
    cgroup_dirs,
    cgroup_memory_limit_mib,
    detect_inventory,
    query_nvml,
)
from crucible.errors import Error, InvalidGpuError

GIB = 1024**3


class FakeNVMLError(Exception):
    """Stands in for pynvml.NVMLError."""


@dataclass
class _Mem:
    total: int


class FakeNvml:
    """Mimics the slice of the pynvml module the agent uses."""

    def __init__(
        self,
        devices: list[tuple[str | bytes, int]],
        *,
        fail_init: bool = False,
        fail_on: str | None = None,
    ) -> None:
        self.devices = devices
        self.fail_init = fail_init
        self.fail_on = fail_on
        self.shutdowns = 0

    def _maybe_fail(self, name: str) -> None:
        if self.fail_on == name:
            raise FakeNVMLError(f"{name} failed")

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetName(self, h: int) -> str | bytes:
        self._maybe_fail("name")
        return self.devices[h][0]

    def nvmlDeviceGetMemoryInfo(self, h: int) -> _Mem:
        return _Mem(self.devices[h][1])

    def nvmlDeviceGetUUID(self, h: int) -> str | bytes:
        return f"GPU-real-{h}"

    def nvmlDeviceGetIndex(self, h: int) -> int:
        return h


@pytest.fixture
def detect(tmp_path: Path) -> Callable[..., Any]:
    def run(**kw: Any) -> Any:
        args: dict[str, Any] = {
            "fake_gpus": None,
            "allow_fake": False,
            "disk_path": tmp_path / "agent" / "not-yet-created",
            "host_name": "box1",
            "nvml": FakeNvml([]),
        }
        args.update(kw)
        return detect_inventory(**args)

    return run


def test_real_gpus_are_mapped_to_catalog_models(detect: Callable[..., Any]) -> None:
    nvml = FakeNvml(
        [
            ("NVIDIA H100 80GB HBM3", 80 * GIB),
            (b"NVIDIA A100-SXM4-80GB", 80 * GIB),  # old pynvml returned bytes
            ("NVIDIA Quantum Widget 9000", 12 * GIB),
        ]
    )
    inv = detect(nvml=nvml)
    assert [(g.index, g.model, g.memory_mib, g.fake) for g in inv.gpus] == [
        (0, "H100", 80 * 1024, False),
        (1, "A100-80GB", 80 * 1024, False),
        # Not catalogued: listed under NVML's own name rather than dropped.
        (2, "NVIDIA Quantum Widget 9000", 12 * 1024, False),
    ]
    assert [g.uuid for g in inv.gpus] == ["GPU-real-0", "GPU-real-1", "GPU-real-2"]
    assert nvml.shutdowns == 1


def test_nvml_missing_means_zero_gpus(detect: Callable[..., Any]) -> None:
    inv = detect(nvml=FakeNvml([("NVIDIA H100", GIB)], fail_init=True))
    assert inv.gpus == []
    assert inv.cpu_cores > 0 and inv.memory_mib > 0 and inv.disk_mib > 0


def test_nvml_failing_midway_advertises_no_gpus() -> None:
    nvml = FakeNvml([("NVIDIA H100", GIB)], fail_on="name")
    assert query_nvml(nvml) == []
    assert nvml.shutdowns == 1


def test_real_pynvml_on_this_machine_never_raises(detect: Callable[..., Any]) -> None:
    # nvml=None loads the real pynvml; without a driver that must be zero GPUs, not an error.
    inv = detect(nvml=None)
    assert all(not g.fake for g in inv.gpus)


def test_fake_gpus_allowed(detect: Callable[..., Any]) -> None:
    inv = detect(fake_gpus="4xH100-80GB", allow_fake=True)
    assert [g.model for g in inv.gpus] == ["H100"] * 4
    assert all(g.fake and g.memory_mib == 80 * 1024 for g in inv.gpus)
    assert [g.uuid for g in inv.gpus] == [f"GPU-fake-box1-{i}" for i in range(4)]

    inv = detect(fake_gpus="2xL4,1xA100", allow_fake=True)
    assert [(g.index, g.model, g.memory_mib) for g in inv.gpus] == [
        (0, "L4", 24 * 1024),
        (1, "L4", 24 * 1024),
        (2, "A100-40GB", 40 * 1024),
    ]


def test_fake_gpus_need_permission(detect: Callable[..., Any]) -> None:
    with pytest.raises(Error, match="CRUCIBLE_ALLOW_FAKE_GPUS=1 or pass --allow-fake-gpus"):
        detect(fake_gpus="1xH100", allow_fake=False)


def test_fake_gpus_never_mix_with_real_ones(detect: Callable[..., Any]) -> None:
    nvml = FakeNvml([("NVIDIA L4", 24 * GIB)])
    with pytest.raises(Error, match="cannot be mixed"):
        detect(fake_gpus="1xH100", allow_fake=True, nvml=nvml)


@pytest.mark.parametrize(
    ("spec", "match"),
    [("1xH100-40GB", "has 80 GB"), ("2xWarpDrive", "unknown GPU model"), (" , ", "no device")],
)
def test_bad_fake_specs(detect: Callable[..., Any], spec: str, match: str) -> None:
    with pytest.raises(InvalidGpuError, match=match):
        detect(fake_gpus=spec, allow_fake=True)


def _cgroup_tree(tmp_path: Path, cpu: dict[str, str], mem: dict[str, str]) -> tuple[Path, Path]:
    """A fake /sys/fs/cgroup with a nested cgroup 'a/b', and a /proc pointing into it."""
    root = tmp_path / "cgroup"
    (root / "a" / "b").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for rel, text in cpu.items():
        (root / rel / "cpu.max").write_text(text)
    for rel, text in mem.items():
        (root / rel / "memory.max").write_text(text)
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/a/b\n")
    (proc / "meminfo").write_text("MemTotal:       16777216 kB\nMemFree: 1 kB\n")
    return root, proc


def test_cgroup_limits_cap_cpu_and_memory(tmp_path: Path, detect: Callable[..., Any]) -> None:
    root, proc = _cgroup_tree(
        tmp_path,
        cpu={"a": "150000 100000\n", "a/b": "max 100000\n"},
        mem={"a": "max\n", "a/b": f"{2 * GIB}\n"},
    )
    dirs = cgroup_dirs(proc / "self" / "cgroup", root)
    assert dirs == [root / "a" / "b", root / "a", root]
    assert cgroup_cpu_limit(dirs) == 1.5  # the parent's quota binds the child
    assert cgroup_memory_limit_mib(dirs) == 2048
    inv = detect(proc_root=proc, cgroup_root=root)
    assert inv.cpu_cores <= 1.5
    assert inv.memory_mib == 2048


def test_no_cgroup_limits_means_machine_totals(tmp_path: Path, detect: Callable[..., Any]) -> None:
    root, proc = _cgroup_tree(tmp_path, cpu={"a/b": "max 100000"}, mem={"a/b": "max"})
    dirs = cgroup_dirs(proc / "self" / "cgroup", root)
    assert cgroup_cpu_limit(dirs) is None
    assert cgroup_memory_limit_mib(dirs) is None
    assert detect(proc_root=proc, cgroup_root=root).memory_mib == 16 * 1024


def test_no_cgroup_v2_hierarchy(tmp_path: Path) -> None:
    assert cgroup_dirs(tmp_path / "missing", tmp_path) == []
