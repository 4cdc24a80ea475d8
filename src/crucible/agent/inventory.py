"""What this host has to offer: CPU cores, memory, disk and GPUs.

:func:`detect_inventory` is the one entry point. It reads the kernel's view of the machine
(CPU affinity, ``/proc/meminfo``, cgroup v2 limits, free disk) and asks NVML for GPUs. NVML is
reached only through :func:`query_nvml`, which takes the ``pynvml`` module as an argument so tests
can hand it a fake module; a host without a driver simply has zero GPUs.

Declared ("fake") GPUs let a GPU-less machine pretend to be a GPU host for tests and demos. They
are refused unless explicitly allowed, and never mixed with real devices, so a real host cannot
accidentally advertise hardware it does not have.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from crucible.errors import Error, InvalidGpuError
from crucible.protocol.gpus import GPU_CATALOG, model_from_nvml_name, parse_fake_gpus
from crucible.protocol.hosts import DeviceInfo, Inventory

__all__ = [
    "cgroup_cpu_limit",
    "cgroup_dirs",
    "cgroup_memory_limit_mib",
    "detect_inventory",
    "fake_devices",
    "query_nvml",
]

log = logging.getLogger(__name__)

_MIB = 1024 * 1024


# -- GPUs --------------------------------------------------------------------------------------
def _text(value: str | bytes) -> str:
    # pynvml returned bytes before 11.5 and str since; accept both.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def query_nvml(nvml: Any) -> list[DeviceInfo]:
    """The real GPUs NVML reports, in NVML index order.

    ``nvml`` is the ``pynvml`` module or an object with the same functions (``nvmlInit``,
    ``nvmlDeviceGetCount``, ``nvmlDeviceGetHandleByIndex``, ``nvmlDeviceGetName``,
    ``nvmlDeviceGetMemoryInfo``, ``nvmlDeviceGetUUID``, ``nvmlDeviceGetIndex``,
    ``nvmlShutdown``). Any failure (no driver, no library, a broken device) yields ``[]`` and a
    log line: a host without usable GPUs is a CPU host, never an error.

    ``model`` is the catalog name (``"H100"``) when the device is catalogued, else NVML's raw
    name, so an unknown card is still listed (and can still be asked for by that name).
    """
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, OSError, ...
        log.debug("NVML unavailable (%s): no GPUs", exc)
        return []
    devices: list[DeviceInfo] = []
    try:
        for i in range(int(nvml.nvmlDeviceGetCount())):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = _text(nvml.nvmlDeviceGetName(handle))
            devices.append(
                DeviceInfo(
                    index=int(nvml.nvmlDeviceGetIndex(handle)),
                    model=model_from_nvml_name(name) or name,
                    memory_mib=int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // _MIB,
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                )
            )
    except Exception as exc:
        # A half-read device list would advertise a wrong shape; advertise none instead.
        log.warning("NVML failed while listing GPUs (%s); advertising no GPUs", exc)
        devices = []
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception as exc:
            log.debug("nvmlShutdown failed: %s", exc)
    return devices


def _load_pynvml() -> Any:
    try:
        import pynvml
    except ImportError:  # the package is a dependency, but a broken install must not be fatal
        return None
    return pynvml


# "H100-80GB": a catalog name followed by its own memory size.
def fake_devices(spec: str, host_name: str) -> list[DeviceInfo]:
    """Declared devices for ``spec`` such as ``"4xH100-80GB"`` or ``"2xL4,1xA100"``.

    Memory comes from the catalog; UUIDs are ``GPU-fake-{host_name}-{index}`` so re-registering
    the same host declares the same devices. Raises :class:`InvalidGpuError` for unknown models.
    """
    # The catalog accepts a memory suffix that matches the model ("H100-80GB").
    models = parse_fake_gpus(spec)
    if len(models) > 64:
        raise InvalidGpuError(
            f"--fake-gpus {spec!r} declares {len(models)} devices; the most is 64"
        )
    return [
        DeviceInfo(
            index=i,
            model=model,
            memory_mib=GPU_CATALOG[model].memory_gib * 1024,
            uuid=f"GPU-fake-{host_name}-{i}",
            fake=True,
        )
        for i, model in enumerate(models)
    ]


# -- cgroup v2 ---------------------------------------------------------------------------------
def cgroup_dirs(
    proc_self_cgroup: Path = Path("/proc/self/cgroup"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> list[Path]:
    """This process's cgroup v2 directory and its ancestors up to the root, innermost first.

    Limits of every ancestor apply, so callers take the minimum over all of them. Empty when
    there is no cgroup v2 hierarchy at ``cgroup_root`` (cgroup v1 hosts are not capped).
    """
    if not (cgroup_root / "cgroup.controllers").exists():
        return []
    rel = "/"
    try:
        for line in proc_self_cgroup.read_text().splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip() or "/"
                break
    except OSError:
        pass
    # Inside a cgroup namespace the path is "/" and the namespace root is mounted at the root.
    parts = [p for p in rel.split("/") if p and p not in (".", "..")]
    dirs = [cgroup_root.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]
    return [d for d in dirs if d.is_dir()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(dirs: list[Path]) -> float | None:
    """Cores allowed by the tightest ``cpu.max`` (``"quota period"``), or None when unlimited."""
    limits: list[float] = []
    for d in dirs:
        text = _read(d / "cpu.max")
        if not text:
            continue
        quota, _, period = text.partition(" ")
        if quota == "max":
            continue
        try:
            q, p = int(quota), int(period or "100000")
        except ValueError:
            continue
        if q > 0 and p > 0:
            limits.append(q / p)
    return min(limits) if limits else None


def cgroup_memory_limit_mib(dirs: list[Path]) -> int | None:
    """MiB allowed by the tightest ``memory.max``, or None when unlimited."""
    limits: list[int] = []
    for d in dirs:
        text = _read(d / "memory.max")
        if not text or text == "max":
            continue
        try:
            limits.append(int(text) // _MIB)
        except ValueError:
            continue
    return min(limits) if limits else None


# -- CPU, memory, disk -------------------------------------------------------------------------
def _cpu_cores(dirs: list[Path]) -> float:
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        cores = float(os.cpu_count() or 1)
    quota = cgroup_cpu_limit(dirs)
    if quota is not None:
        cores = min(cores, quota)
    # Inventory.cpu_cores must be > 0; a quota of a few millicores still offers something.
    return max(round(cores, 3), 0.001)


def _memory_mib(meminfo: Path, dirs: list[Path]) -> int:
    total: int | None = None
    text = _read(meminfo)
    if text:
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) // 1024  # kB → MiB
                break
    if total is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // _MIB
    cap = cgroup_memory_limit_mib(dirs)
    if cap is not None:
        total = min(total, cap)
    return max(total, 1)


def _disk_free_mib(path: Path) -> int:
    # The agent dir may not exist yet on first start: measure the filesystem it will live on.
    probe = path.expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free // _MIB


# -- the entry point ---------------------------------------------------------------------------
def detect_inventory(
    *,
    fake_gpus: str | None,
    allow_fake: bool,
    disk_path: Path,
    host_name: str,
    nvml: Any = None,
    proc_root: Path = Path("/proc"),
    cgroup_root: Path = Path("/sys/fs/cgroup"),
) -> Inventory:
    """This host's inventory.

    - ``cpu_cores``: CPUs this process may run on, capped by a cgroup v2 ``cpu.max`` quota.
    - ``memory_mib``: ``MemTotal``, capped by a cgroup v2 ``memory.max``.
    - ``disk_mib``: free space on the filesystem of ``disk_path``.
    - ``gpus``: NVML's devices (``nvml`` defaults to the ``pynvml`` module), or, when
      ``fake_gpus`` is given, declared devices marked ``fake=True``.

    Raises :class:`crucible.errors.Error` when ``fake_gpus`` is given but ``allow_fake`` is
    False, or when NVML found real GPUs (a host is either real or declared, never both), and
    :class:`crucible.errors.InvalidGpuError` for an unknown model in ``fake_gpus``.
    ``proc_root`` and ``cgroup_root`` exist so tests can point at a fixture tree.
    """
    if fake_gpus is not None and not allow_fake:
        raise Error(
            f"--fake-gpus {fake_gpus!r} declares GPUs this machine may not have; fake GPUs are "
            "for testing only. Set CRUCIBLE_ALLOW_FAKE_GPUS=1 or pass --allow-fake-gpus to "
            "permit them."
        )
    dirs = cgroup_dirs(proc_root / "self" / "cgroup", cgroup_root)
    module = _load_pynvml() if nvml is None else nvml
    real = query_nvml(module) if module is not None else []
    if fake_gpus is not None:
        if real:
            raise Error(
                f"this machine has {len(real)} real GPU(s) ({', '.join(d.model for d in real)}); "
                "fake GPUs cannot be mixed with real ones. Drop --fake-gpus to offer the real "
                "devices."
            )
        gpus = fake_devices(fake_gpus, host_name)
    else:
        gpus = real
    return Inventory(
        cpu_cores=_cpu_cores(dirs),
        memory_mib=_memory_mib(proc_root / "meminfo", dirs),
        disk_mib=_disk_free_mib(disk_path),
        gpus=gpus,
    )
